-- The delivery worker counts each endpoint's deliveries in flight before every
-- claim. With the lease's end in the index, that count is an index-only scan of
-- the few leased rows of one endpoint; the old index (no lease column) let the
-- planner prefer scanning every pending delivery and filtering, which made the
-- claim the delivery worker's bottleneck (13 of 14 ms at 80,000 pending).
-- Written in a maintenance window's terms: the table holds only deliveries in
-- flight or kept for their history, and the index is small (leased rows only).
drop index webhook_deliveries_leased;
create index webhook_deliveries_leased on webhook_deliveries (merchant_id, endpoint_id, leased_until)
    where leased_until is not null;
