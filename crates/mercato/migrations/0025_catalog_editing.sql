-- A catalog the merchant edits (issue 36): products archived rather than
-- deleted, variants added and archived, prices changed with their history
-- kept, and a search by name or SKU prefix.

-- An archived product is not sold. A constant default: no table rewrite.
alter table products add column status text not null default 'active';
alter table products add constraint products_status_known
    check (status in ('active', 'archived')) not valid;
alter table products validate constraint products_status_known;

-- A variant "deleted" by the merchant is archived: orders, refunds and
-- remediation still name its SKU, so the row stays.
alter table variants add column archived_at timestamptz;

-- What `GET /v1/products?q=` compares: the name and the SKU in lower case.
-- Stored rather than an index on lower(...): under row-level security the
-- planner will not use an index through a function that is not leakproof
-- (lower is not), but the text comparisons are. Kept by the triggers below;
-- rows from before this migration get theirs from migration 0026.
alter table products add column search_name text;
alter table variants add column search_sku text;

create function catalog_search_terms() returns trigger
language plpgsql as $$
begin
    if tg_table_name = 'products' then
        new.search_name := lower(new.name);
    else
        new.search_sku := lower(new.sku);
    end if;
    return new;
end $$;
create trigger products_search_terms before insert or update of name on products
    for each row execute function catalog_search_terms();
create trigger variants_search_terms before insert or update of sku on variants
    for each row execute function catalog_search_terms();

-- Every price a variant has had, from when to when (`valid_to` null: in force).
-- Orders record the unit price they were sold at; this is the catalog's own
-- record, for the merchant and for the analytics product versions.
create table variant_prices (
    merchant_id uuid not null,
    variant_id uuid not null,
    valid_from timestamptz not null,
    valid_to timestamptz,
    price_amount bigint not null check (price_amount >= 0),
    currency text not null check (currency ~ '^[A-Z]{3}$'),
    primary key (merchant_id, variant_id, valid_from),
    foreign key (merchant_id, variant_id) references variants (merchant_id, id) on delete cascade,
    check (valid_to is null or valid_to > valid_from)
);
insert into variant_prices (merchant_id, variant_id, valid_from, price_amount, currency)
select merchant_id, id, created_at, price_amount, currency from variants;

alter table variant_prices enable row level security;
alter table variant_prices force row level security;
create policy tenant_isolation on variant_prices
    using (merchant_id = current_merchant_id()) with check (merchant_id = current_merchant_id());
-- The analytics export reads a SKU's prices by key, across merchants (0019).
create policy analytics_read on variant_prices for select to mercato_worker
    using (not mercato_absent(merchant_id));
