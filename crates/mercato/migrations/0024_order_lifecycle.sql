-- no-transaction
-- Orders you can work (issue 36, item 3): list filters, cancellation, refunds
-- by amount, fulfilment status.
--
-- `orders` is the largest live table, so this file runs outside a
-- transaction, statement by statement (`db::migrate`): its indexes are built
-- CONCURRENTLY (writes go on meanwhile), its constraints are added NOT VALID
-- and validated by a statement of their own (SHARE UPDATE EXCLUSIVE: writes
-- go on during the scan), and its new columns take a constant default or
-- none (no rewrite). Every statement can run again after a crash part-way.

-- Where an order's units stand: nothing shipped, some, all.
alter table orders add column if not exists fulfillment_status text not null default 'unfulfilled';
alter table orders drop constraint if exists orders_fulfillment_status_check,
    add constraint orders_fulfillment_status_check
    check (fulfillment_status in ('unfulfilled', 'partially_fulfilled', 'fulfilled')) not valid;
alter table orders validate constraint orders_fulfillment_status_check;

-- A confirmed order the merchant cancelled (refunded in full, its units back).
alter table orders drop constraint if exists orders_status_check,
    add constraint orders_status_check
    check (status in ('pending', 'confirmed', 'failed', 'cancelled')) not valid;
alter table orders validate constraint orders_status_check;
alter table orders add column if not exists cancelled_at timestamptz;
alter table orders add column if not exists cancel_reason text;

-- A refund of an amount rather than of units says why.
alter table order_refunds add column if not exists reason text;

-- GET /v1/orders?status=&fulfillment_status=&email=&sku=&created_from=&created_to=
-- pages by id within each filter. Plain columns only: under row-level
-- security a condition on a function that is not leakproof (lower()) is not
-- an index condition. created_from/created_to use orders_by_time
-- (merchant_id, created_at, id).
create index concurrently if not exists orders_by_status on orders (merchant_id, status, id);
create index concurrently if not exists orders_by_fulfillment_status
    on orders (merchant_id, fulfillment_status, id);
create index concurrently if not exists orders_by_customer_key on orders (merchant_id, customer_key, id);
create index concurrently if not exists order_items_by_sku on order_items (merchant_id, sku, order_id);

-- Refunds left pending by a crash (recorded, the provider not known to have
-- paid) are resumed by the recovery worker, across merchants.
create index concurrently if not exists order_refunds_pending on order_refunds (created_at)
    where status = 'pending';
do $$
begin
    if not exists (select 1 from pg_policies
                   where tablename = 'order_refunds' and policyname = 'worker_access') then
        create policy worker_access on order_refunds to mercato_worker using (true) with check (true);
    end if;
end $$;
