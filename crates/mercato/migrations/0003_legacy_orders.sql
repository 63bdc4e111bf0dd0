-- Orders as the legacy system kept them: money as numeric, the customer's
-- fields inlined on every order. The pgshift plan
-- migrations/plans/orders_money_customers.toml moves them online to integer
-- minor units and a customers table of their own.

create sequence legacy_orders_id_seq;

create table legacy_orders (
    merchant_id uuid not null references merchants (id),
    id bigint not null default nextval('legacy_orders_id_seq'),
    customer_email text not null,
    customer_name text not null,
    total numeric(12, 2) not null check (total >= 0),
    currency text not null check (currency ~ '^[A-Z]{3}$'),
    placed_at timestamptz not null default now(),
    primary key (merchant_id, id)
);
-- Keyset order for the backfill (ids come from one sequence).
create index legacy_orders_by_id on legacy_orders (id);

alter table legacy_orders enable row level security;
alter table legacy_orders force row level security;
create policy tenant_isolation on legacy_orders
    using (merchant_id = current_merchant_id()) with check (merchant_id = current_merchant_id());
