-- Pricing: per-merchant settings, rule-set revisions (immutable, audited), and the
-- counters that keep limited rules (uses, uses per customer, budget) from overrunning.
-- Orders record how they were priced, so any order can be re-priced exactly.

create table pricing_settings (
    merchant_id uuid primary key references merchants (id),
    -- The currency rules are written in (their Money amounts).
    currency text not null default 'EUR' check (currency ~ '^[A-Z]{3}$'),
    calculator_version text not null default 'v1' check (calculator_version in ('v1', 'v2')),
    -- pricing::RateTable and the shipping setting, as JSON.
    tax jsonb not null default '{"inclusive": true, "default_rate": 0}',
    shipping jsonb not null default '{"kind": "free"}',
    updated_at timestamptz not null default now()
);

create table pricing_rule_revisions (
    merchant_id uuid not null references merchants (id),
    revision bigint not null check (revision > 0),
    currency text not null check (currency ~ '^[A-Z]{3}$'),
    rules jsonb not null,
    -- Who made it (the API key's id) and what changed against the previous revision.
    actor text not null,
    diff jsonb not null,
    created_at timestamptz not null default now(),
    primary key (merchant_id, revision)
);

-- Uses and money given by each limited rule, across revisions (a rule is its id).
create table pricing_rule_usage (
    merchant_id uuid not null,
    rule_id text not null,
    uses bigint not null default 0 check (uses >= 0),
    spent bigint not null default 0 check (spent >= 0),
    primary key (merchant_id, rule_id)
);

create table pricing_customer_usage (
    merchant_id uuid not null,
    rule_id text not null,
    customer_email text not null,
    uses bigint not null default 0 check (uses >= 0),
    primary key (merchant_id, rule_id, customer_email)
);

-- What each order took from each limited rule, so a failed checkout gives it back once.
create table pricing_order_uses (
    merchant_id uuid not null,
    order_id uuid not null,
    rule_id text not null,
    customer_email text not null,
    amount bigint not null check (amount >= 0),
    released_at timestamptz,
    primary key (merchant_id, order_id, rule_id)
);

alter table orders add column calculator_version text check (calculator_version in ('v1', 'v2'));
alter table orders add column ruleset_revision bigint;
-- The breakdown charged, and what it was priced from (cart, usage): see pricing::PricedOrder.
alter table orders add column pricing jsonb;

do $$
declare t text;
begin
    foreach t in array array['pricing_settings', 'pricing_rule_revisions', 'pricing_rule_usage',
                             'pricing_customer_usage', 'pricing_order_uses'] loop
        execute format('alter table %I enable row level security', t);
        execute format('alter table %I force row level security', t);
        execute format(
            'create policy tenant_isolation on %I using (merchant_id = current_merchant_id()) with check (merchant_id = current_merchant_id())',
            t);
    end loop;
end $$;

-- Whether a customer already bought (pricing's `first_order` condition).
create index orders_by_customer on orders (merchant_id, lower(customer_email));
