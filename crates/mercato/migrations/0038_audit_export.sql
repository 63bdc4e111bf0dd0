-- The audit trail exported to the analytics marts (issue 37, item 5), as the
-- events are (migration 0019): each record carries the id of the transaction
-- that wrote it, and the exporter takes the records of transactions below the
-- oldest one still running, exactly once. A record the mover copies into
-- another cell gets position 0 there (its first cell exported it). Records
-- written before this migration have none: the export reads them once, by key.
alter table audit_log add column xid xid8;
create trigger audit_position before insert on audit_log
    for each row execute function mercato_event_position();
create policy analytics_read on audit_log for select to mercato_worker
    using (not mercato_absent(merchant_id));
