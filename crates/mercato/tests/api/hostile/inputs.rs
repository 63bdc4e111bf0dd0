//! Hostile cases: inputs (see `hostile/mod.rs`): a query string that made a
//! handler panic, a rule set too large for its own event, and a storm of
//! requests with a key that does not exist.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::routing::get;
use axum::Router;
use tower::ServiceExt;

use crate::helpers::TestApp;

#[tokio::test]
async fn a_date_far_outside_any_sale_is_refused_naming_the_parameter() {
    let app = TestApp::spawn().await;
    let m = app.create_merchant("far-dates").await;
    // Used to panic (`NaiveDate - TimeDelta overflowed`) and drop the connection.
    let r = app
        .get("/v1/analytics/revenue?to=-262143-01-01", &m.key)
        .await;
    r.assert_problem(422, "validation-error");
    assert_eq!(r.error_fields(), ["to"]);
    let r = app
        .get(
            "/v1/analytics/revenue?from=+262142-12-31&to=2026-01-01",
            &m.key,
        )
        .await;
    r.assert_problem(422, "validation-error");
    assert_eq!(r.error_fields(), ["from"]);
    // The edges of the allowed years still answer.
    let r = app
        .get(
            "/v1/analytics/revenue?from=2000-01-01&to=2000-01-01",
            &m.key,
        )
        .await;
    assert_eq!(r.status, 200, "body: {}", r.body);
}

async fn panics() -> &'static str {
    panic!("a handler bug")
}

#[tokio::test]
async fn a_panicking_handler_answers_500_problem_and_keeps_serving() {
    let router = mercato::http::catch_panics(
        Router::new()
            .route("/boom", get(panics))
            .route("/fine", get(|| async { "ok" })),
    );
    let response = router
        .clone()
        .oneshot(Request::get("/boom").body(Body::empty()).expect("request"))
        .await
        .expect("an answer, not a dropped connection");
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let body = axum::body::to_bytes(response.into_body(), 64 * 1024)
        .await
        .expect("body");
    let problem: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(problem["type"], "https://mercato.dev/problems/internal");
    assert_eq!(problem["status"], 500);
    let response = router
        .oneshot(Request::get("/fine").body(Body::empty()).expect("request"))
        .await
        .expect("answer");
    assert_eq!(response.status(), StatusCode::OK);
}
