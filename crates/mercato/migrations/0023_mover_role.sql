-- Moves run as role `mercato_mover` (issue 35, item 7), not as the schema's
-- owner: a role that can do moves and nothing else. Like the other service
-- roles it owns nothing and is neither superuser nor BYPASSRLS. It reads and
-- writes a merchant's tenant rows with `app.merchant_id` set to that
-- merchant, so row-level security binds it as it binds a request; its grants
-- on the platform tables (the directory, the move records, the fence, the
-- capture's keys) are listed in `db::PLATFORM_GRANTS`. What it cannot be
-- granted, because only a table's owner may do it, goes through the
-- functions below, each owned by the schema's owner and doing one narrow
-- thing: DDL of the capture triggers, deleting a departed merchant's row,
-- and counting the sessions older than the cutover.

-- The capture's off-switch is honoured for the mover's sessions: the mover
-- role's, and still the owner's (a mover of an older binary). Not for the
-- request or worker roles: they are members of no role.
create or replace function mercato_mover_writes() returns boolean
language sql stable set search_path = public as $$
    select coalesce(current_setting('mercato.mover', true) = 'on', false)
       and (pg_has_role(session_user, 'mercato_mover', 'MEMBER')
            or pg_has_role(session_user,
                           (select relowner from pg_class where oid = 'public.move_changes'::regclass),
                           'MEMBER'))
$$;

-- A table a move carries: in `public`, with `merchant_id` and row-level
-- security forced (the platform tables have none, and a trigger on
-- `move_changes` would capture its own writes).
create function mercato_tenant_table(tbl regclass) returns boolean
language sql stable set search_path = public as $$
    select exists (
        select 1 from pg_class c
        where c.oid = tbl and c.relnamespace = 'public'::regnamespace
          and c.relkind in ('r', 'p') and c.relforcerowsecurity
          and exists (select 1 from pg_attribute a
                      where a.attrelid = c.oid and a.attname = 'merchant_id' and not a.attisdropped))
$$;

-- The merchant's capture triggers on one tenant table (on write, on delete),
-- recording its primary key's columns. Creating or dropping a trigger takes
-- the table's owner; the caller sets `lock_timeout` and retries.
create function mercato_capture_on(tbl regclass, merchant uuid) returns void
language plpgsql security definer set search_path = public as $$
declare
    hex text := replace(merchant::text, '-', '');
    args text;
begin
    if not mercato_tenant_table(tbl) then
        raise exception '% is not a tenant table', tbl using errcode = '42501';
    end if;
    select string_agg(quote_literal(a.attname), ', ' order by array_position(i.indkey::int2[], a.attnum))
      into args
      from pg_index i join pg_attribute a on a.attrelid = i.indrelid and a.attnum = any (i.indkey)
     where i.indrelid = tbl and i.indisprimary;
    if args is null then
        raise exception '% has no primary key', tbl using errcode = '42501';
    end if;
    execute format(
        'create or replace trigger %I after insert or update on %s for each row
         when (new.merchant_id = %L) execute function mercato_capture_change(%s)',
        'mercato_move_' || hex || '_w', tbl, merchant, args);
    execute format(
        'create or replace trigger %I after delete on %s for each row
         when (old.merchant_id = %L) execute function mercato_capture_change(%s)',
        'mercato_move_' || hex || '_d', tbl, merchant, args);
end $$;

create function mercato_capture_off(tbl regclass, merchant uuid) returns void
language plpgsql security definer set search_path = public as $$
declare
    hex text := replace(merchant::text, '-', '');
begin
    if not mercato_tenant_table(tbl) then
        raise exception '% is not a tenant table', tbl using errcode = '42501';
    end if;
    execute format('drop trigger if exists %I on %s', 'mercato_move_' || hex || '_w', tbl);
    execute format('drop trigger if exists %I on %s', 'mercato_move_' || hex || '_d', tbl);
end $$;

-- A cell's copy of a merchant's row (its tenant rows' foreign keys point at
-- it), deleted with the rest of its copy: only where the cell has let the
-- merchant go (`departed`), and never the directory's own row (the main
-- database's directory names every merchant that ever moved).
create function mercato_forget_departed_merchant(merchant uuid) returns void
language plpgsql security definer set search_path = public as $$
begin
    if not exists (select 1 from cell_absent where merchant_id = merchant and why = 'departed')
       or exists (select 1 from tenant_directory where merchant_id = merchant) then
        raise exception 'merchant % has not departed from this database: its row stays', merchant
            using errcode = '42501';
    end if;
    delete from merchants where id = merchant;
end $$;

-- Transactions of this database, other than the caller's, begun before
-- `since` and not waiting at the cutover's gate (an advisory lock). Another
-- role's sessions show no `xact_start` to a role that is not their own, a
-- superuser or a member of pg_read_all_stats: the count is the owner's view.
create function mercato_transactions_begun_before(since timestamptz) returns bigint
language sql stable security definer set search_path = pg_catalog, public as $$
    select count(*) from pg_stat_activity
    where datname = current_database() and pid <> pg_backend_pid()
      and xact_start < since and state <> 'idle'
      and not (wait_event_type = 'Lock' and wait_event = 'advisory')
$$;

revoke all on function mercato_tenant_table(regclass) from public;
revoke all on function mercato_capture_on(regclass, uuid) from public;
revoke all on function mercato_capture_off(regclass, uuid) from public;
revoke all on function mercato_forget_departed_merchant(uuid) from public;
revoke all on function mercato_transactions_begun_before(timestamptz) from public;
grant execute on function mercato_capture_on(regclass, uuid) to mercato_mover;
grant execute on function mercato_capture_off(regclass, uuid) to mercato_mover;
grant execute on function mercato_forget_departed_merchant(uuid) to mercato_mover;
grant execute on function mercato_transactions_begun_before(timestamptz) to mercato_mover;
-- Where a merchant lives and its moves, as requests read them.
grant execute on function mercato_directory_entry(uuid) to mercato_mover;
grant execute on function mercato_moves_of(uuid) to mercato_mover;
