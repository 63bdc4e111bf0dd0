//! States are enums: unknown text is refused by the database (a CHECK per state
//! column) and by the code that reads it (decoding fails; nothing falls back to
//! a default state).

use mercato::checkout::{FulfillmentStatus, OrderStatus, Step};
use mercato::inventory::ReservationStatus;
use mercato::payments::PaymentStatus;
use mercato::tenancy::Strategy;

use crate::helpers::TestApp;

/// Every column that holds a state, and the values its enum declares.
fn state_columns() -> Vec<(&'static str, &'static str, Vec<&'static str>)> {
    fn all<T: Copy>(values: &[T], text: fn(T) -> &'static str) -> Vec<&'static str> {
        values.iter().map(|v| text(*v)).collect()
    }
    vec![
        (
            "orders",
            "status",
            all(OrderStatus::ALL, OrderStatus::as_str),
        ),
        ("orders", "saga_step", all(Step::ALL, Step::as_str)),
        (
            "orders",
            "fulfillment_status",
            all(FulfillmentStatus::ALL, FulfillmentStatus::as_str),
        ),
        (
            "reservations",
            "status",
            all(ReservationStatus::ALL, ReservationStatus::as_str),
        ),
        (
            "payments",
            "status",
            all(PaymentStatus::ALL, PaymentStatus::as_str),
        ),
        (
            "merchants",
            "stock_strategy",
            all(Strategy::ALL, Strategy::as_str),
        ),
        ("idempotency_keys", "status", vec!["in_flight", "done"]),
    ]
}

#[tokio::test]
async fn every_state_column_has_a_check_that_refuses_unknown_text() {
    let app = TestApp::spawn().await;
    let m = app.merchant_with_stock("acme", "TEE", 5).await;
    // One row in each table, so a bad update has something to refuse.
    let body = crate::helpers::Body::Json(serde_json::json!({
        "customer": {"email": "ann@example.com"},
        "items": [{"sku": "TEE", "quantity": 1}],
        "payment_method": "pm_card_ok"}));
    let checkout = app
        .post_idempotent("/v1/checkouts", &m.key, "state-test", body)
        .await;
    assert_eq!(checkout.status, 201, "{}", checkout.body);
    for (table, column, values) in state_columns() {
        // The CHECK lists exactly what the enum declares.
        let checks: Vec<String> = sqlx::query_scalar(
            "select pg_get_constraintdef(oid) from pg_constraint
             where conrelid = $1::regclass and contype = 'c'",
        )
        .bind(table)
        .fetch_all(&app.owner)
        .await
        .unwrap();
        let listed = checks
            .iter()
            .any(|c| c.contains(column) && values.iter().all(|v| c.contains(&format!("'{v}'"))));
        assert!(
            listed,
            "{table}.{column} has a CHECK listing {values:?}: {checks:?}"
        );
        assert!(app.count(table).await > 0, "{table} has a row");
        let update = format!("update {table} set {column} = 'bogus'");
        let err = sqlx::query(&update)
            .execute(&app.owner)
            .await
            .expect_err("unknown state text is refused");
        let code = err.as_database_error().and_then(|e| e.code());
        assert_eq!(code.as_deref(), Some("23514"), "{table}.{column}: {err}");
    }
}

#[tokio::test]
async fn unknown_state_text_does_not_decode() {
    let app = TestApp::spawn().await;
    async fn decodes<T>(app: &TestApp, text: &str) -> bool
    where
        T: for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + Unpin,
    {
        sqlx::query_scalar::<_, T>("select $1::text")
            .bind(text)
            .fetch_one(&app.owner)
            .await
            .is_ok()
    }
    assert!(decodes::<OrderStatus>(&app, "pending").await);
    assert!(!decodes::<OrderStatus>(&app, "bogus").await);
    assert!(decodes::<Step>(&app, "captured").await);
    assert!(
        !decodes::<Step>(&app, "").await,
        "no step defaults to reserved"
    );
    assert!(decodes::<ReservationStatus>(&app, "consumed").await);
    assert!(!decodes::<ReservationStatus>(&app, "Active").await);
    assert!(decodes::<PaymentStatus>(&app, "refunded").await);
    assert!(!decodes::<PaymentStatus>(&app, "paid").await);
    assert!(decodes::<Strategy>(&app, "optimistic").await);
    assert!(!decodes::<Strategy>(&app, "magic").await);
}
