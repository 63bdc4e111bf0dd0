-- Analytics read the events outbox by commit position. Each event row gets
-- the id (xid8) of the transaction that wrote it: below the oldest running
-- transaction's id (pg_snapshot_xmin) every transaction has ended, so an
-- export that takes the positions in [last, xmin) misses no row that
-- commits late, and the next export goes on from xmin.
--
-- Rows from before this migration have no position (exported once, as
-- history). Rows the mover brings from another cell get position 0: the
-- cell they were written in exported them (their xid is another cluster's).
alter table events add column xid xid8;

create function mercato_event_position() returns trigger
language plpgsql as $$
begin
    if current_setting('mercato.mover', true) = 'on' then
        new.xid := '0'::xid8;
    else
        new.xid := pg_current_xact_id();
    end if;
    return new;
end $$;

create trigger events_position before insert on events
    for each row execute function mercato_event_position();

create index events_by_position on events (xid);

-- The export reads an order's items and a SKU's product by key, across
-- merchants, as the worker role (read only).
do $$
declare t text;
begin
    foreach t in array array['order_items', 'products', 'variants'] loop
        execute format(
            'create policy analytics_read on %I for select to mercato_worker using (not mercato_absent(merchant_id))',
            t);
    end loop;
end $$;
