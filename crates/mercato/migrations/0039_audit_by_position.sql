-- no-transaction
-- The exporter reads the audit trail by commit position (migration 0038).
create index concurrently if not exists audit_log_by_position on audit_log (xid);
