-- Customers as records (issue 36): one per e-mail address and merchant,
-- created by the first checkout or by the merchant; orders point at theirs.

-- The pgshift demo migration (plans/orders_money_customers.toml) used to
-- create a table of this name for the legacy orders; its table is now
-- `legacy_customers`. A database that ran the demo keeps its rows under the
-- new name. (A demo migration still between expand and contract at this
-- point would need its backfill started again: the demo has no live data.)
do $$
begin
    if to_regclass('public.customers') is not null
       and not exists (select 1 from information_schema.columns
                       where table_schema = 'public' and table_name = 'customers'
                         and column_name = 'email_key') then
        execute 'alter table customers rename to legacy_customers';
    end if;
end $$;

create table customers (
    merchant_id uuid not null references merchants (id),
    id uuid not null,
    -- As given; `email_key` (trimmed, lower case) is what makes it unique.
    -- Byte-wise ("C") so that a prefix is one range of the unique index,
    -- usable under row-level security (a condition on lower() is not).
    email text not null check (length(email) between 3 and 254),
    email_key text collate "C" not null,
    name text check (length(name) <= 200),
    search_name text collate "C",
    addresses jsonb not null default '[]' check (jsonb_typeof(addresses) = 'array'),
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    -- Set when the customer's personal data was erased (the row and its id stay).
    erased_at timestamptz,
    primary key (merchant_id, id),
    constraint customers_email_unique unique (merchant_id, email_key)
);
create index customers_by_search_name on customers (merchant_id, search_name);

alter table customers enable row level security;
alter table customers force row level security;
create policy tenant_isolation on customers
    using (merchant_id = current_merchant_id()) with check (merchant_id = current_merchant_id());
-- The analytics export and the mail worker read them by key, across merchants.
create policy worker_access on customers to mercato_worker
    using (not mercato_absent(merchant_id)) with check (not mercato_absent(merchant_id));

-- Nullable, no default: a catalog-only change, no rewrite of the largest live
-- table. New orders get it at checkout; older ones from the pgshift plan
-- plans/orders_customers.toml (batched, resumable, throttled).
alter table orders add column customer_id uuid;

-- Why a credit was given, kept in the wallet's ledger with the entry.
alter table wallet_entries add column reason text;
alter table wallet_entries add constraint wallet_entries_reason_length
    check (length(reason) <= 500) not valid;
alter table wallet_entries validate constraint wallet_entries_reason_length;
