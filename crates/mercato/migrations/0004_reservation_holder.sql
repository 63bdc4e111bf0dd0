-- Inventory no longer reads checkout's `orders`: a reservation an order holds
-- says so itself, and the expiry worker leaves it to that order's saga.
alter table reservations add column held_by_order uuid;

update reservations r set held_by_order = o.id
from orders o
where o.merchant_id = r.merchant_id and o.reservation_id = r.id and r.status = 'active';
