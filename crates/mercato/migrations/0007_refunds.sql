-- Partial refunds. An order's refund names the units it returns; each costs what the
-- customer paid for those units (discount share included), so all refunds together
-- never exceed what was captured. The sandbox provider refunds part of a payment,
-- once per idempotency key.

alter table payments add column refunded_amount bigint not null default 0;
update payments set refunded_amount = amount where status = 'refunded';
alter table payments add constraint payments_refunded_within_amount
    check (refunded_amount between 0 and amount);

create table payment_refunds (
    merchant_id uuid not null,
    id uuid not null,
    payment_id uuid not null,
    idempotency_key text not null,
    amount bigint not null check (amount >= 0),
    created_at timestamptz not null default now(),
    primary key (merchant_id, id),
    unique (merchant_id, idempotency_key),
    foreign key (merchant_id, payment_id) references payments (merchant_id, id)
);

create table order_refunds (
    merchant_id uuid not null,
    id uuid not null,
    order_id uuid not null,
    idempotency_key text,
    -- pending: recorded, the provider not yet known to have paid it back.
    status text not null check (status in ('pending', 'succeeded', 'failed')),
    amount bigint not null check (amount >= 0),
    -- The refund that returned the last units also returns the shipping charge.
    includes_shipping boolean not null default false,
    created_at timestamptz not null default now(),
    primary key (merchant_id, id),
    unique (merchant_id, order_id, idempotency_key),
    foreign key (merchant_id, order_id) references orders (merchant_id, id)
);

create table order_refund_lines (
    merchant_id uuid not null,
    refund_id uuid not null,
    sku text not null,
    quantity bigint not null check (quantity > 0),
    amount bigint not null check (amount >= 0),
    primary key (merchant_id, refund_id, sku),
    foreign key (merchant_id, refund_id) references order_refunds (merchant_id, id) on delete cascade
);

do $$
declare t text;
begin
    foreach t in array array['payment_refunds', 'order_refunds', 'order_refund_lines'] loop
        execute format('alter table %I enable row level security', t);
        execute format('alter table %I force row level security', t);
        execute format(
            'create policy tenant_isolation on %I using (merchant_id = current_merchant_id()) with check (merchant_id = current_merchant_id())',
            t);
    end loop;
end $$;
