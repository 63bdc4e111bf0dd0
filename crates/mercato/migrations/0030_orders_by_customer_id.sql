-- no-transaction
-- `GET /v1/orders?customer_id=`: a customer's orders, newest id last.
create index concurrently if not exists orders_by_customer_id on orders (merchant_id, customer_id, id);
