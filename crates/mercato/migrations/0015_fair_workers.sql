-- Background workers take turns across merchants (tenancy::Rotation): they find
-- the merchants with work by skipping through these indexes one merchant at a
-- time, then take a bounded share of each merchant's due rows. Leading with
-- merchant_id serves both; the old indexes, by due time alone, served neither.
drop index reservations_due;
create index reservations_due on reservations (merchant_id, expires_at) where status = 'active';
drop index orders_pending;
create index orders_pending on orders (merchant_id, updated_at) where status = 'pending';
