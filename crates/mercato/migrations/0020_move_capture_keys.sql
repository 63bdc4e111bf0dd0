-- A move captures which keys were written, not the rows as written: the
-- replay reads each key's row from the source as it is then (or finds it
-- gone, and deletes it). The row image cost every write of a moving
-- merchant a second copy of its row (a TOAST-compressed jsonb for a wide
-- one) in the request path, for a replay that keeps only each key's last
-- write anyway, which is the row the source holds once every write is in.
-- `directory.moving` now marks only a cutover: the gate is held for the
-- write pause's sake, not for the whole move.
create or replace function mercato_capture_change() returns trigger
language plpgsql security definer set search_path = public as $$
declare
    whole jsonb;
    key jsonb := '{}';
    col text;
begin
    if current_setting('mercato.mover', true) = 'on' then
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

alter table move_changes drop column "row";
