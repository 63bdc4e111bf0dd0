-- The audit trail (issue 37, item 5): who changed what of a merchant's, when,
-- from where, with the diff, in the transaction of the change.
--
-- A request that changes something on a person's or a key's behalf names its
-- action and actor in the transaction-local setting `app.audit` (JSON, set by
-- `db::TenantTx::act_for`). Triggers on the audited tables then write one
-- record per changed row, with the columns that changed: no change commits
-- without its record, and no code path (HTTP, CLI) can forget to write it.
-- Transactions that do not set `app.audit` (checkouts and the storefront,
-- which keep their own record in the order and its events; background
-- workers) write none: the trigger's WHEN is false, and nothing else runs.
-- The service roles may insert and read records, never change or delete them
-- (`db::grant_service_roles`).

create table audit_log (
    merchant_id uuid not null,
    -- A UUIDv7 (time-ordered): newest first is `order by id desc`.
    id uuid not null,
    at timestamptz not null default clock_timestamp(),
    -- What was asked, as the API names it: `product.update`, `stock.set`, …
    action text not null check (length(action) between 1 and 100),
    actor_kind text not null check (actor_kind in ('key', 'admin', 'operator', 'person', 'system')),
    -- A key's fingerprint (`key:…`), a person's id, `admin`, a worker's name.
    actor text not null check (length(actor) between 1 and 200),
    target_type text not null,
    target_id text not null,
    operation text not null check (operation in ('insert', 'update', 'delete')),
    -- insert: the new row; delete: the old row; update: {column: {from, to}}
    -- for the columns that changed. Secrets and personal data appear as
    -- "[redacted]" (the column changed; its value is not kept here).
    changes jsonb not null,
    address text,
    user_agent text,
    request_id text,
    primary key (merchant_id, id)
);
create index audit_log_by_target on audit_log (merchant_id, target_type, target_id, id);

alter table audit_log enable row level security;
alter table audit_log force row level security;
create policy tenant_isolation on audit_log
    using (merchant_id = current_merchant_id()) with check (merchant_id = current_merchant_id());

-- A UUIDv7 from the clock (PostgreSQL 15 has none): 48 bits of milliseconds,
-- version 7, random rest.
create or replace function mercato_uuid_v7() returns uuid
language sql volatile as $$
    select encode(
        set_bit(set_bit(
            overlay(uuid_send(gen_random_uuid())
                    placing substring(int8send(floor(extract(epoch from clock_timestamp()) * 1000)::bigint) from 3)
                    from 1 for 6),
            52, 1), 53, 1),
        'hex')::uuid
$$;

-- The trigger: TG_ARGV[0] the target's key columns (comma-separated),
-- TG_ARGV[1] (optional) the columns whose values are not kept.
create or replace function mercato_audit() returns trigger
language plpgsql as $$
declare
    ctx jsonb := current_setting('app.audit', true)::jsonb;
    old_row jsonb := case when tg_op <> 'INSERT' then to_jsonb(old) end;
    new_row jsonb := case when tg_op <> 'DELETE' then to_jsonb(new) end;
    row_now jsonb := coalesce(new_row, old_row);
    keys text[] := string_to_array(tg_argv[0], ',');
    redacted text[] := coalesce(string_to_array(nullif(tg_argv[1], ''), ','), '{}');
    target text;
    changes jsonb := '{}';
    col text;
begin
    select string_agg(row_now ->> k, '/' order by ord) into target
    from unnest(keys) with ordinality as u (k, ord);
    if tg_op = 'UPDATE' then
        for col in select key from jsonb_each(new_row) loop
            -- Bookkeeping and columns derived from others (search keys).
            continue when col in ('updated_at', 'merchant_id', 'search_name', 'search_sku');
            if (old_row -> col) is distinct from (new_row -> col) then
                changes := changes || jsonb_build_object(col,
                    case when col = any (redacted) then '"[redacted]"'::jsonb
                         else jsonb_build_object('from', old_row -> col, 'to', new_row -> col) end);
            end if;
        end loop;
        if changes = '{}' then
            return null;
        end if;
    else
        changes := row_now - 'merchant_id';
        foreach col in array redacted loop
            if changes ? col then
                changes := jsonb_set(changes, array[col], '"[redacted]"');
            end if;
        end loop;
    end if;
    insert into audit_log (merchant_id, id, action, actor_kind, actor, target_type, target_id,
                           operation, changes, address, user_agent, request_id)
    values (coalesce((row_now ->> 'merchant_id')::uuid, (row_now ->> 'id')::uuid), mercato_uuid_v7(),
            ctx ->> 'action', ctx ->> 'actor_kind', ctx ->> 'actor', tg_table_name, coalesce(target, ''),
            lower(tg_op), changes, ctx ->> 'address', ctx ->> 'user_agent', ctx ->> 'request_id');
    return null;
end $$;

-- Which tables, by which key, with which values kept out. `merchants` is the
-- directory's (its own id is the merchant). `app.audit` is '' (not null)
-- after a transaction that set it ended on the same connection.
do $$
declare
    audited constant text[][] := array[
        ['merchants', 'id', 'creation_key,creation_hash'],
        ['api_keys', 'id', 'key_hash'],
        ['products', 'id', ''],
        ['variants', 'sku', ''],
        ['variant_prices', 'variant_id,valid_from', ''],
        ['stock', 'sku', ''],
        ['pricing_settings', 'merchant_id', ''],
        ['pricing_rule_revisions', 'revision', ''],
        ['pricing_rollouts', 'id', ''],
        ['webhook_endpoints', 'id', 'secret,previous_secret'],
        ['customers', 'id', 'email,email_key,name,search_name,addresses'],
        ['wallet_entries', 'id', 'customer_key'],
        ['orders', 'id', 'customer_email,customer_key'],
        ['order_refunds', 'id', ''],
        ['order_fulfillments', 'id', ''],
        ['order_returns', 'id', ''],
        ['fulfillment_settings', 'merchant_id', ''],
        ['mail_settings', 'merchant_id', 'from_address'],
        ['remediation_incidents', 'id', 'link_secret'],
        ['order_adjustments', 'id', 'customer_email']
    ];
    i int;
begin
    for i in 1 .. array_length(audited, 1) loop
        execute format('drop trigger if exists audit on %I', audited[i][1]);
        execute format(
            'create trigger audit after insert or update or delete on %I for each row
             when (coalesce(current_setting(''app.audit'', true), '''') <> '''')
             execute function mercato_audit(%L, %L)',
            audited[i][1], audited[i][2], audited[i][3]);
    end loop;
end $$;
