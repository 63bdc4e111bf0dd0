-- The request role (mercato_app) reaches the platform tables only through
-- what requests need (issue 35): the directory and a merchant's move through
-- the functions below; `db::grant_service_roles` revokes the rest.
--
-- The change capture's off-switch (`mercato.mover = on`) was a GUC any role
-- may set: the app role could write a moving merchant's rows uncaptured, and
-- the target would never get them. It is honoured now only for the mover's
-- sessions: those of the schema's owner (the mover connects as the owner).
-- `session_user` cannot be changed by a role that is not a superuser, and
-- the service roles are members of no role.
create function mercato_mover_writes() returns boolean
language sql stable set search_path = public as $$
    select coalesce(current_setting('mercato.mover', true) = 'on', false)
       and pg_has_role(session_user,
                       (select relowner from pg_class where oid = 'public.move_changes'::regclass),
                       'MEMBER')
$$;

create or replace function mercato_capture_change() returns trigger
language plpgsql security definer set search_path = public as $$
declare
    whole jsonb;
    key jsonb := '{}';
    col text;
begin
    if mercato_mover_writes() then
        return null;
    end if;
    if tg_op = 'DELETE' then whole := to_jsonb(old); else whole := to_jsonb(new); end if;
    foreach col in array tg_argv loop
        key := key || jsonb_build_object(col, whole -> col);
    end loop;
    insert into move_changes (merchant_id, table_name, key)
    values ((whole ->> 'merchant_id')::uuid, tg_table_name, key);
    return null;
end $$;

create or replace function mercato_event_position() returns trigger
language plpgsql as $$
begin
    if mercato_mover_writes() then
        new.xid := '0'::xid8;
    else
        new.xid := pg_current_xact_id();
    end if;
    return new;
end $$;

-- Where a request's merchant lives (no row: the main database).
create function mercato_directory_entry(merchant uuid) returns table (cell text, moving boolean)
language sql stable security definer set search_path = public as $$
    select d.cell, d.moving from tenant_directory d where d.merchant_id = merchant
$$;

-- One merchant's moves, as `GET /v1/merchants/{id}` and its moves' pages show them.
create function mercato_moves_of(merchant uuid) returns setof tenant_moves
language sql stable security definer set search_path = public as $$
    select * from tenant_moves m where m.merchant_id = merchant
$$;

revoke all on function mercato_directory_entry(uuid) from public;
revoke all on function mercato_moves_of(uuid) from public;
grant execute on function mercato_directory_entry(uuid) to mercato_app;
grant execute on function mercato_moves_of(uuid) to mercato_app;
