-- Inventory, reservations, the sandbox payment provider's state, orders (the
-- persisted checkout saga) and idempotency keys.
--
-- Background workers (reservation expiry, saga recovery) act across tenants as
-- role mercato_worker (created by the service before migrating): like the app role
-- it owns nothing and is not BYPASSRLS; the policies below name it explicitly.

alter table merchants add column stock_strategy text not null default 'reservation'
    check (stock_strategy in ('pessimistic', 'optimistic', 'reservation'));

create table stock (
    merchant_id uuid not null,
    sku text not null,
    on_hand bigint not null check (on_hand >= 0),
    reserved bigint not null default 0 check (reserved >= 0),
    updated_at timestamptz not null default now(),
    primary key (merchant_id, sku),
    -- available = on_hand - reserved never goes negative, whatever the code does.
    constraint stock_available_not_negative check (reserved <= on_hand),
    foreign key (merchant_id, sku) references variants (merchant_id, sku) on delete cascade
);

create table reservations (
    merchant_id uuid not null,
    id uuid not null,
    status text not null default 'active'
        check (status in ('active', 'released', 'expired', 'consumed')),
    expires_at timestamptz not null,
    created_at timestamptz not null default now(),
    settled_at timestamptz,
    primary key (merchant_id, id),
    check ((status = 'active') = (settled_at is null))
);
create index reservations_due on reservations (expires_at) where status = 'active';

create table reservation_items (
    merchant_id uuid not null,
    reservation_id uuid not null,
    sku text not null,
    quantity bigint not null check (quantity > 0),
    primary key (merchant_id, reservation_id, sku),
    foreign key (merchant_id, reservation_id) references reservations (merchant_id, id) on delete cascade
);

-- The sandbox payment provider keeps its state here, as a real provider would on its side.
create table payments (
    merchant_id uuid not null,
    id uuid not null,
    idempotency_key text not null,
    payment_method text not null,
    amount bigint not null check (amount >= 0),
    currency text not null,
    status text not null check (status in ('authorized', 'captured', 'voided', 'refunded', 'failed')),
    failure_code text,
    off_session boolean not null default false,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    primary key (merchant_id, id),
    unique (merchant_id, idempotency_key)
);

create table orders (
    merchant_id uuid not null,
    id uuid not null,
    idempotency_key text,
    status text not null check (status in ('pending', 'confirmed', 'failed')),
    saga_step text not null
        check (saga_step in ('reserved', 'authorized', 'captured', 'confirmed', 'compensated')),
    customer_email text not null,
    payment_method text not null,
    promo_code text,
    reservation_id uuid not null,
    payment_id uuid,
    total_amount bigint not null check (total_amount >= 0),
    currency text not null,
    failure_reason text,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    primary key (merchant_id, id),
    unique (merchant_id, idempotency_key),
    unique (merchant_id, reservation_id),
    foreign key (merchant_id, reservation_id) references reservations (merchant_id, id),
    foreign key (merchant_id, payment_id) references payments (merchant_id, id)
);
create index orders_pending on orders (updated_at) where status = 'pending';

create table order_items (
    merchant_id uuid not null,
    order_id uuid not null,
    sku text not null,
    quantity bigint not null check (quantity > 0),
    unit_amount bigint not null check (unit_amount >= 0),
    primary key (merchant_id, order_id, sku),
    foreign key (merchant_id, order_id) references orders (merchant_id, id) on delete cascade
);

create table idempotency_keys (
    merchant_id uuid not null,
    key text not null,
    request_hash bytea not null,
    status text not null check (status in ('in_flight', 'done')),
    response_status integer,
    response_content_type text,
    response_body bytea,
    created_at timestamptz not null default now(),
    expires_at timestamptz not null,
    primary key (merchant_id, key)
);

do $$
declare t text;
begin
    foreach t in array array['stock', 'reservations', 'reservation_items', 'payments', 'orders',
                             'order_items', 'idempotency_keys'] loop
        execute format('alter table %I enable row level security', t);
        execute format('alter table %I force row level security', t);
        execute format(
            'create policy tenant_isolation on %I using (merchant_id = current_merchant_id()) with check (merchant_id = current_merchant_id())',
            t);
    end loop;
    -- What the cross-tenant workers may touch: expiry releases stock held by due
    -- reservations; recovery finds sagas left mid-way.
    foreach t in array array['stock', 'reservations', 'reservation_items', 'orders'] loop
        execute format('create policy worker_access on %I to mercato_worker using (true) with check (true)', t);
    end loop;
end $$;
