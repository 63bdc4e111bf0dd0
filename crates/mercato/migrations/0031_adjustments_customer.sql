-- A remediation adjustment names the customer its order belongs to (issue 36),
-- not only the e-mail address. Nullable, no default: a catalog-only change;
-- adjustments of orders not linked yet (plans/orders_customers.toml) keep null.
alter table order_adjustments add column customer_id uuid;
