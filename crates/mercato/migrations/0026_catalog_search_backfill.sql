-- no-transaction
-- Search terms for the products and variants from before 0025, in batches of
-- 1,000 rows, each committed on its own (a `DO` block may commit when it is
-- not inside a transaction): no batch holds many row locks for long, and a
-- run cut short resumes where it stopped (it picks rows still without terms).
do $$
declare
    done integer;
begin
    loop
        update products p set search_name = lower(p.name)
        where (p.merchant_id, p.id) in (
            select merchant_id, id from products where search_name is null limit 1000
        );
        get diagnostics done = row_count;
        commit;
        exit when done = 0;
    end loop;
    loop
        update variants v set search_sku = lower(v.sku)
        where (v.merchant_id, v.id) in (
            select merchant_id, id from variants where search_sku is null limit 1000
        );
        get diagnostics done = row_count;
        commit;
        exit when done = 0;
    end loop;
end $$;
