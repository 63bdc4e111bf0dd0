-- Events and webhooks. An event row is written in the same transaction as the
-- change it describes (a transactional outbox), together with one delivery per
-- enabled endpoint subscribed to its type; the delivery worker (role
-- mercato_worker, across merchants) sends them, signed per Standard Webhooks.

create table events (
    merchant_id uuid not null references merchants (id),
    id uuid not null,
    type text not null,
    -- The payload's schema version for this type.
    version integer not null default 1 check (version > 0),
    payload jsonb not null,
    occurred_at timestamptz not null default now(),
    primary key (merchant_id, id)
);
create index events_by_type on events (merchant_id, type, id);
-- Waiting to be published on the bus (only when MERCATO_NATS_URL is set).
alter table events add column bus_pending boolean not null default false;
create index events_bus_pending on events (id) where bus_pending;

create table webhook_endpoints (
    merchant_id uuid not null references merchants (id),
    id uuid not null,
    url text not null,
    description text,
    event_types text[] not null check (cardinality(event_types) > 0),
    -- whsec_ + base64 key. During a rotation the previous secret signs too, until it expires.
    secret text not null,
    previous_secret text,
    previous_secret_expires_at timestamptz,
    status text not null default 'enabled' check (status in ('enabled', 'disabled')),
    disabled_reason text,
    consecutive_failures integer not null default 0,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    primary key (merchant_id, id)
);

create table webhook_deliveries (
    merchant_id uuid not null,
    id uuid not null,
    endpoint_id uuid not null,
    event_id uuid not null,
    -- pending: to send at next_attempt_at (an attempt in flight holds it as a lease);
    -- dead: every attempt of the schedule failed.
    status text not null default 'pending' check (status in ('pending', 'succeeded', 'dead')),
    attempts integer not null default 0,
    next_attempt_at timestamptz not null default now(),
    -- Set while an attempt is in flight (a lease: a worker that dies lets it lapse).
    leased_until timestamptz,
    last_status_code integer,
    last_error text,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    primary key (merchant_id, id),
    foreign key (merchant_id, endpoint_id) references webhook_endpoints (merchant_id, id) on delete cascade,
    foreign key (merchant_id, event_id) references events (merchant_id, id)
);
create index webhook_deliveries_due on webhook_deliveries (merchant_id, endpoint_id, next_attempt_at)
    where status = 'pending';
-- What is in flight per endpoint (few rows: an attempt clears its lease).
create index webhook_deliveries_leased on webhook_deliveries (merchant_id, endpoint_id)
    where leased_until is not null;
create index webhook_deliveries_by_endpoint on webhook_deliveries (merchant_id, endpoint_id, created_at);

create table webhook_attempts (
    merchant_id uuid not null,
    delivery_id uuid not null,
    attempt integer not null,
    status_code integer,
    latency_ms integer not null,
    error text,
    -- The first KB of the receiver's answer.
    response_excerpt text,
    at timestamptz not null default now(),
    primary key (merchant_id, delivery_id, attempt),
    foreign key (merchant_id, delivery_id) references webhook_deliveries (merchant_id, id) on delete cascade
);

do $$
declare t text;
begin
    foreach t in array array['events', 'webhook_endpoints', 'webhook_deliveries', 'webhook_attempts'] loop
        execute format('alter table %I enable row level security', t);
        execute format('alter table %I force row level security', t);
        execute format(
            'create policy tenant_isolation on %I using (merchant_id = current_merchant_id()) with check (merchant_id = current_merchant_id())',
            t);
        -- The delivery worker sends every merchant's deliveries.
        execute format('create policy worker_access on %I to mercato_worker using (true) with check (true)', t);
    end loop;
end $$;

-- inventory.low_stock: an event when a sale takes a SKU's units on hand down to
-- its threshold (null: no alert).
alter table stock add column low_stock_threshold bigint check (low_stock_threshold >= 0);
