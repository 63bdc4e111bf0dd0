//! Hostile cases: inputs (see `hostile/mod.rs`): a query string that made a
//! handler panic, a rule set too large for its own event, and a storm of
//! requests with a key that does not exist.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::routing::get;
use axum::Router;
use reqwest::Method;
use serde_json::{json, Value};
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

/// `n` rules, each with an id of the longest length the DSL allows (128).
fn rule_set(n: usize) -> Value {
    let rules: Vec<Value> = (0..n)
        .map(|i| {
            json!({
                "id": format!("{i:05}-{}", "r".repeat(122)),
                "priority": 1,
                "stackable": true,
                "when": {"promo_code": format!("CODE{i}")},
                "then": {"percent_off": 1},
            })
        })
        .collect();
    json!({ "rules": rules })
}

#[tokio::test]
async fn a_rule_set_too_large_for_its_event_is_refused_naming_rules() {
    let app = TestApp::spawn().await;
    let m = app.create_merchant("many-rules").await;
    // 700 rules of 128-character ids (about 140 KB): used to answer 500, the
    // event naming every added id being over the 64 KiB limit.
    let r = app
        .request(
            Method::PUT,
            "/v1/pricing/rules",
            Some(&m.key),
            Some(rule_set(700)),
        )
        .await;
    r.assert_problem(422, "validation-error");
    assert_eq!(r.error_fields(), ["rules"]);
    assert_eq!(
        app.get("/v1/pricing/rules", &m.key).await.body["revision"],
        0
    );
}

#[tokio::test]
async fn the_largest_rule_set_saves_and_its_event_stays_small() {
    let app = TestApp::spawn().await;
    let m = app.create_merchant("most-rules").await;
    let r = app
        .request(
            Method::PUT,
            "/v1/pricing/rules",
            Some(&m.key),
            Some(rule_set(pricing::MAX_RULES)),
        )
        .await;
    assert_eq!(r.status, 200, "body: {}", r.body);
    assert_eq!(r.body["revision"], 1);
    let events = app
        .get("/v1/events?type=pricing.rules_changed", &m.key)
        .await;
    let event = &events.body["data"][0];
    assert_eq!(event["data"]["revision"], 1);
    assert_eq!(event["data"]["rules"], pricing::MAX_RULES);
    assert_eq!(event["data"]["added"], pricing::MAX_RULES);
    let size = event["data"].to_string().len();
    assert!(
        size < 1024,
        "the event carries {size} bytes: {}",
        event["data"]
    );
    // The ids are one request away, in the revision the event names.
    let revision = app.get("/v1/pricing/rules/revisions/1", &m.key).await;
    assert_eq!(
        revision.body["diff"]["added"].as_array().map(Vec::len),
        Some(pricing::MAX_RULES)
    );
}
