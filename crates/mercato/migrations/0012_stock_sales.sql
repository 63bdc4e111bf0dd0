-- Confirming an order no longer updates its SKU's stock row. Every buyer of a
-- hot product would otherwise take that row's lock once more at confirm (after
-- the FIFO admission had granted them in batches), serialised at one commit
-- each. A confirmed sale is written here instead, a row of its own, and folded
-- into the stock row later in batches (`reserved` and `on_hand` both down by
-- the batch's units): by the SKU's next admission batch, which holds the row
-- lock anyway, or by the background worker.
--
-- A sale not yet folded is still counted in stock.reserved and stock.on_hand,
-- so available (on_hand - reserved) is exact at every instant; the true levels
-- are the view `stock_levels`:
--   on_hand  = stock.on_hand  - unfolded sales
--   reserved = stock.reserved - unfolded sales = units held by active reservations
create table stock_sales (
    merchant_id uuid not null,
    sku text not null,
    reservation_id uuid not null,
    quantity bigint not null check (quantity > 0),
    primary key (merchant_id, sku, reservation_id),
    foreign key (merchant_id, reservation_id) references reservations (merchant_id, id) on delete cascade
);

alter table stock_sales enable row level security;
alter table stock_sales force row level security;
create policy tenant_isolation on stock_sales
    using (merchant_id = current_merchant_id()) with check (merchant_id = current_merchant_id());
-- The background fold works across merchants.
create policy worker_access on stock_sales to mercato_worker using (true) with check (true);

create view stock_levels with (security_invoker = true) as
select s.merchant_id, s.sku,
       s.on_hand - u.units as on_hand,
       s.reserved - u.units as reserved,
       s.on_hand - s.reserved as available,
       s.low_stock_threshold
from stock s, lateral (
    select coalesce(sum(q.quantity), 0)::bigint as units from stock_sales q
    where q.merchant_id = s.merchant_id and q.sku = s.sku
) u;
