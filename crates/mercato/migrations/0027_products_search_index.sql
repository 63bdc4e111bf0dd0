-- no-transaction
-- `GET /v1/products?q=`: a name prefix, compared byte-wise ("C") so that a
-- prefix is one range of the index.
create index concurrently if not exists products_by_search_name
    on products (merchant_id, search_name collate "C");
