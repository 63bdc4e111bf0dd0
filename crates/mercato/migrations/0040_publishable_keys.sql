-- Publishable keys (issue 38, item 1): what a shop's web page holds to call
-- the store API (`/store/v1`). Not secret: it reads the active catalog and
-- runs carts, nothing else, and only from the origins it lists. Kept in the
-- main database beside the API keys (a request resolves its merchant by it),
-- so a move never carries them.
create table publishable_keys (
    merchant_id uuid not null references merchants (id),
    id uuid not null,
    key text not null,
    -- `https://shop.example.com` (scheme, host, port), or `*`: any origin,
    -- without credentials.
    allowed_origins text[] not null,
    created_at timestamptz not null default now(),
    revoked_at timestamptz,
    primary key (merchant_id, id),
    unique (merchant_id, key)
);
alter table publishable_keys enable row level security;
alter table publishable_keys force row level security;
create policy tenant_isolation on publishable_keys
    using (merchant_id = current_merchant_id()) with check (merchant_id = current_merchant_id());
create trigger audit after insert or update or delete on publishable_keys for each row
    when (coalesce(current_setting('app.audit', true), '') <> '')
    execute function mercato_audit('id', '');

-- A browser's preflight carries no key: whether a live key lists its origin
-- ('listed'), or only allows any origin ('any'); null: none.
create function mercato_origin_published(origin text) returns text
language sql stable security definer set search_path = public as $$
    select case
        when exists (select 1 from publishable_keys k
                     where k.revoked_at is null and origin = any (k.allowed_origins)) then 'listed'
        when exists (select 1 from publishable_keys k
                     where k.revoked_at is null and '*' = any (k.allowed_origins)) then 'any'
    end
$$;
revoke all on function mercato_origin_published(text) from public;
grant execute on function mercato_origin_published(text) to mercato_app;
