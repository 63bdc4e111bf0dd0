-- The table before the migration: an application's members, with the whole
-- name in one column and the price in numeric dollars.
create role members_app;
create table members (
    id uuid primary key default gen_random_uuid(),
    full_name text not null,
    price numeric(10, 2) not null,
    joined_at timestamptz not null default now()
);
grant select, insert, update, delete on members to members_app;
insert into members (full_name, price)
select 'Given' || g || ' Family' || g, (g % 1000) / 4.0 from generate_series(1, 20000) g;
insert into members (full_name, price) values ('Cher', 9.99), ('Jean Claude Van Damme', 12.50);
