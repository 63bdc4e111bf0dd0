-- Tenant cells: a merchant's rows live in one database (a cell) and can move
-- to another online. Every cell runs the whole schema; the directory tables
-- mean something only in the main database.

-- Which cell serves a merchant (no row: the main database). `moving`: a move
-- is under way, so every request of the merchant passes the cutover gate.
create table tenant_directory (
    merchant_id uuid primary key references merchants (id),
    cell text not null,
    moving boolean not null default false,
    updated_at timestamptz not null default now()
);

-- Moves, one running per merchant; a resumed move continues from `phase`.
create table tenant_moves (
    id uuid primary key,
    merchant_id uuid not null references merchants (id),
    source text not null,
    target text not null,
    phase text not null check (phase in ('copying', 'catching_up', 'cutting_over', 'moved', 'cleaned', 'aborted')),
    rows_copied bigint not null default 0,
    changes_applied bigint not null default 0,
    rows_cleaned bigint not null default 0,
    pause_ms double precision,
    -- The copy's snapshot (pg_current_snapshot()), once the copy is done.
    snapshot text,
    started_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    finished_at timestamptz
);
create unique index tenant_moves_one_running on tenant_moves (merchant_id)
    where phase in ('copying', 'catching_up', 'cutting_over');

-- Merchants this cell does not serve now: `arriving` (a move is copying them
-- in), `departed` (moved out; rows stay until cleanup). Their transactions are
-- refused here and background workers do not see their rows.
create table cell_absent (
    merchant_id uuid primary key,
    why text not null check (why in ('arriving', 'departed')),
    since timestamptz not null default now()
);

-- What a move out has yet to carry over: each write of the merchant's rows
-- after the capture began, as the row was written (`row`; NULL: deleted),
-- with its transaction, so the changes the copy's snapshot already holds can
-- be told apart (`pg_visible_in_snapshot`). Replayed in `seq` order.
create table move_changes (
    seq bigint generated always as identity primary key,
    merchant_id uuid not null,
    table_name text not null,
    key jsonb not null,
    "row" jsonb,
    xid xid8 not null default pg_current_xact_id()
);
create index move_changes_by_merchant on move_changes (merchant_id, seq);

-- The fence at the start of every tenant transaction (TenantTx::begin).
create function mercato_enter(merchant uuid) returns void
language plpgsql security definer set search_path = public as $$
begin
    if exists (select 1 from cell_absent where merchant_id = merchant) then
        raise exception 'merchant % is not served by this database', merchant
            using errcode = 'MC001', hint = 'its cell changed: route it again';
    end if;
end $$;

create function mercato_absent(merchant uuid) returns boolean
language sql stable as $$
    select exists (select 1 from cell_absent where merchant_id = merchant)
$$;

-- Change capture of a move: installed per table for one merchant
-- (`when (new.merchant_id = …)`), so other merchants' writes only pay the
-- trigger's WHEN test. The arguments name the table's key columns.
create function mercato_capture_change() returns trigger
language plpgsql security definer set search_path = public as $$
declare
    whole jsonb;
    key jsonb := '{}';
    col text;
begin
    if tg_op = 'DELETE' then whole := to_jsonb(old); else whole := to_jsonb(new); end if;
    foreach col in array tg_argv loop
        key := key || jsonb_build_object(col, whole -> col);
    end loop;
    insert into move_changes (merchant_id, table_name, key, "row")
    values ((whole ->> 'merchant_id')::uuid, tg_table_name, key,
            case when tg_op = 'DELETE' then null else whole end);
    return null;
end $$;

-- Background workers do not touch a merchant this cell does not serve.
do $$
declare
    t text;
begin
    for t in select c.relname from pg_policy p join pg_class c on c.oid = p.polrelid
             where p.polname = 'worker_access'
    loop
        execute format(
            'alter policy worker_access on %I using (not mercato_absent(merchant_id)) with check (not mercato_absent(merchant_id))',
            t);
    end loop;
end $$;

revoke all on function mercato_capture_change() from public;
