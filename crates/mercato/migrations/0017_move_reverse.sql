-- A move keeps capturing after its cutover: the target's writes of the
-- merchant, so a rollback can carry them back to the source (the reverse
-- stream). With capture on both sides, the mover's own writes (copy, replay,
-- cleanup) must not be captured again: the mover marks its transactions
-- with `mercato.mover = on`, and the capture skips them.
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
    insert into move_changes (merchant_id, table_name, key, "row")
    values ((whole ->> 'merchant_id')::uuid, tg_table_name, key,
            case when tg_op = 'DELETE' then null else whole end);
    return null;
end $$;

-- A rollback is a move back, without a copy, of a move that kept its
-- source; the move it undoes ends `rolled_back`.
alter table tenant_moves drop constraint tenant_moves_phase_check;
alter table tenant_moves add constraint tenant_moves_phase_check
    check (phase in ('copying', 'catching_up', 'cutting_over', 'moved', 'cleaned', 'aborted', 'rolled_back'));
alter table tenant_moves add column rollback_of uuid references tenant_moves (id);

-- Moves started from the admin API are driven by `serve` (any instance: one
-- at a time, by an advisory lock), resumed by it after a crash, and say why
-- they are stuck, if they are.
alter table tenant_moves add column driven_by text not null default 'cli'
    check (driven_by in ('cli', 'api'));
alter table tenant_moves add column keep_source boolean not null default false;
alter table tenant_moves add column last_error text;

-- The copy reads in short transactions (no snapshot held for its length)
-- and records where it is, so a copy cut off goes on from there.
alter table tenant_moves add column copy_table text;
alter table tenant_moves add column copy_after jsonb;
