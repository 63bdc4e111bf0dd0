-- no-transaction
-- `GET /v1/products?q=`: a SKU prefix, as 0027 does for names.
create index concurrently if not exists variants_by_search_sku
    on variants (merchant_id, search_sku collate "C");
