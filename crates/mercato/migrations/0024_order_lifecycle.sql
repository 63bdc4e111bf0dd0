-- no-transaction
-- Orders you can work (issue 36, item 3): list filters, cancellation, refunds
-- by amount, fulfilments, returns, timelines.
--
-- `orders` is the largest live table, so this file runs outside a
-- transaction, statement by statement (`db::migrate`): its indexes are built
-- CONCURRENTLY (writes go on meanwhile), its constraints are added NOT VALID
-- and validated by a statement of their own (SHARE UPDATE EXCLUSIVE: writes
-- go on during the scan), and its new columns take a constant default or
-- none (no rewrite). Every statement can run again after a crash part-way.

-- Where an order's units stand: nothing shipped, some, all.
alter table orders add column if not exists fulfillment_status text not null default 'unfulfilled';
alter table orders drop constraint if exists orders_fulfillment_status_check,
    add constraint orders_fulfillment_status_check
    check (fulfillment_status in ('unfulfilled', 'partially_fulfilled', 'fulfilled')) not valid;
alter table orders validate constraint orders_fulfillment_status_check;

-- A confirmed order the merchant cancelled (refunded in full, its units back).
alter table orders drop constraint if exists orders_status_check,
    add constraint orders_status_check
    check (status in ('pending', 'confirmed', 'failed', 'cancelled')) not valid;
alter table orders validate constraint orders_status_check;
alter table orders add column if not exists cancelled_at timestamptz;
alter table orders add column if not exists cancel_reason text;

-- A refund of an amount rather than of units says why.
alter table order_refunds add column if not exists reason text;

-- GET /v1/orders?status=&fulfillment_status=&email=&sku=&created_from=&created_to=
-- pages by id within each filter. Plain columns only: under row-level
-- security a condition on a function that is not leakproof (lower()) is not
-- an index condition. created_from/created_to use orders_by_time
-- (merchant_id, created_at, id).
create index concurrently if not exists orders_by_status on orders (merchant_id, status, id);
create index concurrently if not exists orders_by_fulfillment_status
    on orders (merchant_id, fulfillment_status, id);
create index concurrently if not exists orders_by_customer_key on orders (merchant_id, customer_key, id);
create index concurrently if not exists order_items_by_sku on order_items (merchant_id, sku, order_id);

-- Shipments of an order's units, each by the merchant's fulfilment provider.
create table if not exists order_fulfillments (
    merchant_id uuid not null,
    id uuid not null,
    order_id uuid not null,
    idempotency_key text,
    -- The provider that shipped it (`manual` or a plugged-in one).
    provider text not null,
    carrier text,
    tracking_number text,
    created_at timestamptz not null default now(),
    primary key (merchant_id, id),
    unique (merchant_id, order_id, idempotency_key),
    foreign key (merchant_id, order_id) references orders (merchant_id, id)
);
create table if not exists order_fulfillment_lines (
    merchant_id uuid not null,
    fulfillment_id uuid not null,
    sku text not null,
    quantity bigint not null check (quantity > 0),
    primary key (merchant_id, fulfillment_id, sku),
    foreign key (merchant_id, fulfillment_id) references order_fulfillments (merchant_id, id)
        on delete cascade
);
-- Shipped units sent back, each return with the refund it made.
create table if not exists order_returns (
    merchant_id uuid not null,
    id uuid not null,
    order_id uuid not null,
    idempotency_key text,
    refund_id uuid not null,
    -- Whether the units went back on hand.
    restock boolean not null,
    created_at timestamptz not null default now(),
    primary key (merchant_id, id),
    unique (merchant_id, order_id, idempotency_key),
    foreign key (merchant_id, order_id) references orders (merchant_id, id),
    foreign key (merchant_id, refund_id) references order_refunds (merchant_id, id)
);
create table if not exists order_return_lines (
    merchant_id uuid not null,
    return_id uuid not null,
    sku text not null,
    quantity bigint not null check (quantity > 0),
    primary key (merchant_id, return_id, sku),
    foreign key (merchant_id, return_id) references order_returns (merchant_id, id) on delete cascade
);
-- Which fulfilment provider ships a merchant's orders (none: `manual`).
create table if not exists fulfillment_settings (
    merchant_id uuid not null primary key references merchants (id),
    provider text not null check (provider <> ''),
    updated_at timestamptz not null default now()
);
do $$
declare t text;
begin
    foreach t in array array['order_fulfillments', 'order_fulfillment_lines', 'order_returns',
                             'order_return_lines', 'fulfillment_settings'] loop
        execute format('alter table %I enable row level security', t);
        execute format('alter table %I force row level security', t);
        if not exists (select 1 from pg_policies where tablename = t and policyname = 'tenant_isolation') then
            execute format(
                'create policy tenant_isolation on %I using (merchant_id = current_merchant_id()) with check (merchant_id = current_merchant_id())',
                t);
        end if;
    end loop;
end $$;

-- An order's timeline (GET /v1/orders/{id}/timeline) is its events: each
-- event about an order names it in a column of its own, so that reading them
-- is an index range under row-level security (a condition on payload ->>
-- 'order_id' is not: ->> is not leakproof). Events written before this
-- migration have none: their orders' timelines start here.
alter table events add column if not exists order_id uuid;
create index concurrently if not exists events_by_order on events (merchant_id, order_id, id)
    where order_id is not null;

-- Refunds left pending by a crash (recorded, the provider not known to have
-- paid) are resumed by the recovery worker, across merchants.
create index concurrently if not exists order_refunds_pending on order_refunds (created_at)
    where status = 'pending';
do $$
begin
    if not exists (select 1 from pg_policies
                   where tablename = 'order_refunds' and policyname = 'worker_access') then
        create policy worker_access on order_refunds to mercato_worker using (true) with check (true);
    end if;
end $$;
