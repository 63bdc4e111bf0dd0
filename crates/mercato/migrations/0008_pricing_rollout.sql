-- Safe pricing rollout: a candidate rule-set revision and/or calculator version runs
-- in shadow (priced beside what is in force, never charged), then for a stable
-- percentage of customers, then for all; it can be switched back at once. Each
-- order priced during a rollout records both totals. An anomaly check compares each
-- merchant's recent orders with its trailing baseline and stores what is out of band.

-- The revision in force. Null: the newest one (as before rollouts existed), so a
-- revision can now be written without being put in force.
alter table pricing_settings add column live_revision bigint check (live_revision >= 0);

create table pricing_rollouts (
    merchant_id uuid not null references merchants (id),
    id uuid not null,
    -- What is tried (0: no rules).
    candidate_revision bigint not null check (candidate_revision >= 0),
    candidate_version text not null check (candidate_version in ('v1', 'v2')),
    -- What was in force when it started: a completed rollout rolled back restores it.
    previous_revision bigint not null check (previous_revision >= 0),
    previous_version text not null check (previous_version in ('v1', 'v2')),
    stage text not null check (stage in ('shadow', 'percentage', 'complete', 'rolled_back')),
    -- Share of customers charged the candidate in stage `percentage`.
    percent integer not null default 0 check (percent between 0 and 100),
    actor text not null,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    primary key (merchant_id, id)
);
-- At most one rollout runs per merchant at a time.
create unique index pricing_rollouts_one_running on pricing_rollouts (merchant_id)
    where stage in ('shadow', 'percentage');

-- Each order priced while a rollout ran: what the rules in force and the candidate
-- gave, and which of them was charged.
create table pricing_rollout_orders (
    merchant_id uuid not null,
    rollout_id uuid not null,
    order_id uuid not null,
    charged text not null check (charged in ('live', 'candidate')),
    currency text not null,
    live_total bigint not null,
    -- Null when the candidate could not price the cart (the live price was charged).
    candidate_total bigint,
    -- Every line, shipping and tax amount equal, not only the totals.
    same_charge boolean not null,
    created_at timestamptz not null default now(),
    primary key (merchant_id, rollout_id, order_id),
    foreign key (merchant_id, rollout_id) references pricing_rollouts (merchant_id, id)
);

create table pricing_alerts (
    merchant_id uuid not null references merchants (id),
    id uuid not null,
    kind text not null check (kind in ('average_order_value', 'discount_rate')),
    currency text not null,
    window_start timestamptz not null,
    window_end timestamptz not null,
    baseline_start timestamptz not null,
    -- Average order value in minor units, or discount rate in basis points.
    observed bigint not null,
    expected bigint not null,
    window_orders bigint not null,
    baseline_orders bigint not null,
    created_at timestamptz not null default now(),
    primary key (merchant_id, id)
);
create index pricing_alerts_recent on pricing_alerts (merchant_id, kind, currency, created_at);

do $$
declare t text;
begin
    foreach t in array array['pricing_rollouts', 'pricing_rollout_orders', 'pricing_alerts'] loop
        execute format('alter table %I enable row level security', t);
        execute format('alter table %I force row level security', t);
        execute format(
            'create policy tenant_isolation on %I using (merchant_id = current_merchant_id()) with check (merchant_id = current_merchant_id())',
            t);
    end loop;
end $$;

-- The anomaly check reads each merchant's orders of a period, and lists the
-- merchants that sold recently.
create index orders_by_time on orders (merchant_id, created_at);
create index orders_recent on orders (created_at, merchant_id);

-- Which counters an order's use of a limited rule took: the rule-wide one only for
-- rules with a total limit (`uses` or `budget`), the customer's only for rules
-- with `uses_per_customer`. A rule limited per customer alone no longer makes
-- every checkout queue on one counter row; giving a use back undoes exactly what
-- was taken.
alter table pricing_order_uses add column took_total boolean not null default true;
alter table pricing_order_uses add column took_customer boolean not null default true;
