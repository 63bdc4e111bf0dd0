-- Foundation: merchants (a platform table), API keys and the catalog (tenant tables).
--
-- Every tenant table: merchant_id leads the primary key and every unique and foreign
-- key (shardable by merchant_id), and row-level security is enabled and FORCEd with
-- the policy below. The service runs as a role that owns nothing, so RLS binds it.

-- The tenant of the current transaction, set by `select set_config('app.merchant_id', $1, true)`.
-- Unset means no tenant: every policy compares against NULL and matches nothing.
create function current_merchant_id() returns uuid
    language sql stable
    as $$ select nullif(current_setting('app.merchant_id', true), '')::uuid $$;

create table merchants (
    id uuid primary key,
    slug text not null unique check (slug ~ '^[a-z0-9][a-z0-9-]{1,62}$'),
    name text not null check (length(name) between 1 and 200),
    created_at timestamptz not null default now()
);

create table api_keys (
    merchant_id uuid not null references merchants (id),
    id uuid not null,
    key_hash bytea not null,
    created_at timestamptz not null default now(),
    revoked_at timestamptz,
    primary key (merchant_id, id),
    unique (merchant_id, key_hash)
);

create table products (
    merchant_id uuid not null references merchants (id),
    id uuid not null,
    name text not null check (length(name) between 1 and 200),
    description text,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    primary key (merchant_id, id)
);

create table variants (
    merchant_id uuid not null,
    id uuid not null,
    product_id uuid not null,
    sku text not null check (length(sku) between 1 and 64),
    price_amount bigint not null check (price_amount >= 0),
    currency text not null check (currency ~ '^[A-Z]{3}$'),
    created_at timestamptz not null default now(),
    primary key (merchant_id, id),
    constraint variants_sku_unique unique (merchant_id, sku),
    foreign key (merchant_id, product_id) references products (merchant_id, id) on delete cascade
);
create index variants_by_product on variants (merchant_id, product_id);

do $$
declare t text;
begin
    foreach t in array array['api_keys', 'products', 'variants'] loop
        execute format('alter table %I enable row level security', t);
        execute format('alter table %I force row level security', t);
        execute format(
            'create policy tenant_isolation on %I using (merchant_id = current_merchant_id()) with check (merchant_id = current_merchant_id())',
            t);
    end loop;
end $$;
