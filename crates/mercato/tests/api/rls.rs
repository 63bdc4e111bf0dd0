//! Row-level security is what isolates tenants, not the `where` clauses.

use crate::helpers::TestApp;

/// Runs `select count(*) from products` with no tenant filter, as the service would.
async fn unfiltered_product_count(app: &TestApp, merchant: &crate::helpers::Merchant) -> i64 {
    let mut tx = app.tenant_tx(merchant).await;
    sqlx::query_scalar("select count(*) from products")
        .fetch_one(tx.conn())
        .await
        .unwrap()
}

#[tokio::test]
async fn a_query_that_forgets_the_tenant_filter_sees_only_its_tenant() {
    let app = TestApp::spawn().await;
    let a = app.create_merchant("shop-a").await;
    let b = app.create_merchant("shop-b").await;
    app.create_product(&a, "A-1", 100).await;
    app.create_product(&b, "B-1", 100).await;
    app.create_product(&b, "B-2", 100).await;

    assert_eq!(unfiltered_product_count(&app, &a).await, 1);
    assert_eq!(unfiltered_product_count(&app, &b).await, 2);

    // No tenant set at all: nothing is visible.
    let none: i64 = sqlx::query_scalar("select count(*) from products")
        .fetch_one(&app.app_pool)
        .await
        .unwrap();
    assert_eq!(none, 0);

    // Writing another tenant's row is refused by the policy's WITH CHECK.
    let mut tx = app.tenant_tx(&a).await;
    let err = sqlx::query(
        "insert into products (merchant_id, id, name) values ($1, gen_random_uuid(), 'x')",
    )
    .bind(b.id.0)
    .execute(tx.conn())
    .await
    .unwrap_err();
    assert!(err.to_string().contains("row-level security"), "{err}");
    drop(tx);

    // The assertions above depend on RLS: with it off, the same query leaks.
    sqlx::query("alter table products disable row level security")
        .execute(&app.owner)
        .await
        .unwrap();
    assert_eq!(
        unfiltered_product_count(&app, &a).await,
        3,
        "without RLS the unfiltered query sees every tenant"
    );
}

#[tokio::test]
async fn the_service_role_is_bound_by_rls() {
    let app = TestApp::spawn().await;
    let (user, superuser, bypass): (String, bool, bool) = sqlx::query_as(
        "select current_user::text, rolsuper, rolbypassrls from pg_roles where rolname = current_user",
    )
    .fetch_one(&app.app_pool)
    .await
    .unwrap();
    assert_eq!(user, "mercato_app");
    assert!(!superuser && !bypass);
    let owned: i64 = app
        .count(
            "pg_class c join pg_namespace n on n.oid = c.relnamespace
         where n.nspname = 'public' and pg_get_userbyid(c.relowner) = 'mercato_app'",
        )
        .await;
    assert_eq!(owned, 0, "the service role owns no table");
}

/// Platform tables hold no tenant data; every other table is a tenant table.
/// The cells' bookkeeping (directory, moves, fences, captured keys) is the
/// platform's: the mover and the router read it across merchants.
const PLATFORM_TABLES: &[&str] = &[
    "merchants",
    // Logins (a person may work for several merchants) and their sessions.
    "people",
    "sessions",
    "_sqlx_migrations",
    "tenant_directory",
    "tenant_moves",
    "cell_absent",
    "move_changes",
    // The key of the legacy-order id permutation (migration 0022): one row,
    // the owner's alone.
    "legacy_order_id_key",
];

#[tokio::test]
async fn every_tenant_table_forces_rls_and_leads_its_keys_with_merchant_id() {
    let app = TestApp::spawn().await;
    let tables: Vec<(String, bool, bool, bool, i64)> = sqlx::query_as(
        "select c.relname::text, c.relrowsecurity, c.relforcerowsecurity,
                exists (select 1 from pg_attribute a where a.attrelid = c.oid and a.attname = 'merchant_id' and not a.attisdropped),
                (select count(*) from pg_policy p where p.polrelid = c.oid)
         from pg_class c join pg_namespace n on n.oid = c.relnamespace
         where n.nspname = 'public' and c.relkind in ('r', 'p')",
    )
    .fetch_all(&app.owner)
    .await
    .unwrap();
    assert!(tables.len() > PLATFORM_TABLES.len(), "found the tables");
    for (table, rls, forced, has_merchant, policies) in &tables {
        if PLATFORM_TABLES.contains(&table.as_str()) {
            continue;
        }
        assert!(has_merchant, "{table} has merchant_id");
        assert!(*rls && *forced, "{table} enables and forces RLS");
        assert!(*policies > 0, "{table} has a policy");
    }

    // The first column of every primary, unique and foreign key, and of every unique index.
    let keys: Vec<(String, String, String)> = sqlx::query_as(
        "select c.relname::text, con.conname::text, a.attname::text
         from pg_constraint con
         join pg_class c on c.oid = con.conrelid
         join pg_namespace n on n.oid = c.relnamespace
         join pg_attribute a on a.attrelid = c.oid and a.attnum = con.conkey[1]
         where n.nspname = 'public' and con.contype in ('p', 'u', 'f')
         union all
         select c.relname::text, i.relname::text, a.attname::text
         from pg_index x
         join pg_class c on c.oid = x.indrelid
         join pg_class i on i.oid = x.indexrelid
         join pg_namespace n on n.oid = c.relnamespace
         join pg_attribute a on a.attrelid = c.oid and a.attnum = x.indkey[0]
         where n.nspname = 'public' and x.indisunique",
    )
    .fetch_all(&app.owner)
    .await
    .unwrap();
    for (table, key, first) in keys {
        if PLATFORM_TABLES.contains(&table.as_str()) {
            continue;
        }
        assert_eq!(first, "merchant_id", "{table}.{key} leads with merchant_id");
    }
}
