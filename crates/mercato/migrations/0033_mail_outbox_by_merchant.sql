-- no-transaction
-- The mail sender claims a merchant's oldest queued message and lists the
-- merchants with queued mail. Over `mail_outbox_queued (created_at)` the
-- claim filtered every queued row of the other merchants and the listing read
-- every queued row: at 300 checkouts/s the confirmations queued faster than
-- they left (4,342 of 24,000 sent during `bench checkout`, 3.2 ms of SQL per
-- claim, 52 ms per listing). Keyed by merchant, both are a few index probes.
-- The old index `mail_outbox_queued` stays until Mercato's own migrations
-- have a contract phase (dropping it is a contract step: a previous release
-- still running during a rolling upgrade reads through it).
create index concurrently if not exists mail_outbox_queued_by_merchant
    on mail_outbox (merchant_id, created_at) where status = 'queued';
