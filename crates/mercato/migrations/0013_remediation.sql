-- Remediation of a pricing incident (brief §3): the incident, one adjustment per
-- order of its window, every external effect (charge, refund, credit, e-mail)
-- logged under an idempotency key derived from the adjustment and the step,
-- customers' store-credit wallets, and the mail outbox.

-- Orders priced by the withdrawn calculator v3 (the incident's) are stored as such.
alter table orders drop constraint if exists orders_calculator_version_check;
alter table orders add constraint orders_calculator_version_check
    check (calculator_version in ('v1', 'v2', 'v3'));

create table remediation_incidents (
    merchant_id uuid not null,
    id uuid not null,
    window_from timestamptz not null,
    window_to timestamptz not null,
    bad_version text not null check (bad_version in ('v1', 'v2', 'v3')),
    fixed_version text not null check (fixed_version in ('v1', 'v2', 'v3')),
    status text not null default 'open' check (status in ('open', 'closed')),
    -- The scan's keyset cursor: the last order (created_at, id) re-priced.
    scan_after_at timestamptz,
    scan_after_id uuid,
    scanned bigint not null default 0,
    -- Orders of the window that recorded no pricing (placed before pricing was kept).
    skipped bigint not null default 0,
    scan_finished_at timestamptz,
    -- The report read for the scan that finished at this instant (settle needs it).
    reported_scan timestamptz,
    -- Signs the customers' links (choice, new payment method).
    link_secret bytea not null,
    created_at timestamptz not null default now(),
    primary key (merchant_id, id),
    check (window_from < window_to)
);

create table order_adjustments (
    merchant_id uuid not null,
    id uuid not null,
    incident_id uuid not null,
    order_id uuid not null,
    order_placed_at timestamptz not null,
    customer_email text not null,
    charged bigint not null,
    expected bigint not null,
    -- expected - charged: positive when the customer paid too little.
    delta bigint not null,
    currency text not null,
    class text not null check (class in ('underpaid', 'overpaid', 'correct')),
    payment_provider text not null,
    payment_reference uuid,
    payment_method text not null,
    payment_method_status text not null
        check (payment_method_status in ('valid', 'expired', 'no_mandate')),
    state text not null,
    reminders_sent integer not null default 0,
    next_action_at timestamptz,
    choice text check (choice in ('refund', 'credit', 'none')),
    -- The method a customer gave through the link, to be charged once.
    new_payment_method text,
    last_error text,
    settled_at timestamptz,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    primary key (merchant_id, id),
    unique (merchant_id, incident_id, order_id),
    -- No foreign keys to the incident or the order: rows are written only by the
    -- scan, from the incident and the orders it has just read (orders are never
    -- deleted), and the two per-row RI checks more than doubled the cost of its
    -- writes (27 against 12 µs a row, measured on 5,000-row pages).
    check (delta = expected - charged),
    check ((class = 'underpaid') = (delta > 0) and (class = 'overpaid') = (delta < 0)),
    check (state in ('nothing_to_do', 'pending', 'awaiting_payment_method',
                     'escalated', 'awaiting_choice', 'choice_made', 'settled'))
);
-- What settle has to do: the states it acts on only (most adjustments of an
-- incident are correct, and the scan writes them without touching this index).
create index order_adjustments_work on order_adjustments (merchant_id, incident_id, id)
    where state in ('pending', 'awaiting_payment_method', 'choice_made');

-- Every external effect, keyed before it is attempted and never re-keyed: a rerun
-- after a crash repeats the call under the same key, which the provider (and the
-- mail outbox, and the wallet) apply at most once.
create table remediation_effects (
    merchant_id uuid not null,
    idempotency_key text not null,
    adjustment_id uuid not null,
    step text not null check (step in ('charge', 'customer_charge', 'refund', 'credit')),
    amount bigint not null check (amount > 0),
    status text not null default 'started' check (status in ('started', 'succeeded', 'failed')),
    outcome text,
    created_at timestamptz not null default now(),
    finished_at timestamptz,
    primary key (merchant_id, idempotency_key),
    foreign key (merchant_id, adjustment_id) references order_adjustments (merchant_id, id)
);

-- Store credit: a customer's balance, spent by checkout before the card.
create table wallets (
    merchant_id uuid not null,
    customer_key text not null,
    currency text not null,
    balance bigint not null check (balance >= 0),
    updated_at timestamptz not null default now(),
    primary key (merchant_id, customer_key)
);

create table wallet_entries (
    merchant_id uuid not null,
    id uuid not null,
    customer_key text not null,
    -- Positive: credit given; negative: spent by an order.
    amount bigint not null check (amount <> 0),
    idempotency_key text not null,
    order_id uuid,
    created_at timestamptz not null default now(),
    primary key (merchant_id, id),
    unique (merchant_id, idempotency_key),
    foreign key (merchant_id, customer_key) references wallets (merchant_id, customer_key)
);
create index wallet_entries_by_order on wallet_entries (merchant_id, order_id) where order_id is not null;

-- The scan walks an incident's window in (created_at, id) order (a key the
-- anomaly check's range scans use too).
drop index orders_by_time;
create index orders_by_time on orders (merchant_id, created_at, id);

alter table orders add column wallet_amount bigint not null default 0 check (wallet_amount >= 0);

-- E-mail to customers, sent by SMTP (or written as .eml files) at most once per
-- key: a message is marked `sending` (committed) before the SMTP exchange, so a
-- crash mid-send leaves it `unknown`, never sent twice.
create table mail_outbox (
    merchant_id uuid not null,
    idempotency_key text not null,
    id uuid not null,
    to_address text not null,
    subject text not null,
    text_body text not null,
    html_body text not null,
    status text not null default 'queued' check (status in ('queued', 'sending', 'sent', 'unknown', 'failed')),
    attempts integer not null default 0,
    claimed_at timestamptz,
    last_error text,
    created_at timestamptz not null default now(),
    sent_at timestamptz,
    primary key (merchant_id, idempotency_key),
    unique (merchant_id, id)
);
create index mail_outbox_queued on mail_outbox (created_at) where status = 'queued';

do $$
declare t text;
begin
    foreach t in array array['remediation_incidents', 'order_adjustments', 'remediation_effects',
                             'wallets', 'wallet_entries', 'mail_outbox'] loop
        execute format('alter table %I enable row level security', t);
        execute format('alter table %I force row level security', t);
        execute format(
            'create policy tenant_isolation on %I using (merchant_id = current_merchant_id()) with check (merchant_id = current_merchant_id())',
            t);
    end loop;
    -- The mail sender in `serve` sends every merchant's queued mail.
    execute 'create policy worker_access on mail_outbox to mercato_worker using (true) with check (true)';
end $$;
