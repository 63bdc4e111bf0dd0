use reqwest::Method;

use crate::helpers::TestApp;

#[tokio::test]
async fn health_and_readiness_answer() {
    let app = TestApp::spawn().await;
    let health = app.request(Method::GET, "/healthz", None, None).await;
    assert_eq!(health.status, 200);
    let ready = app.request(Method::GET, "/readyz", None, None).await;
    assert_eq!(ready.status, 200);
    assert!(
        ready.headers.contains_key("x-request-id"),
        "every response carries a request id"
    );
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_status() {
    let app = TestApp::spawn().await;
    app.request(Method::GET, "/v1/products", None, None).await;
    let metrics = app.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("http_requests_total{")
                && l.contains(r#"route="/v1/products""#)
                && l.contains(r#"status="401""#)),
        "{metrics}"
    );
    assert!(
        metrics.contains("http_request_duration_seconds_bucket{"),
        "{metrics}"
    );
}

#[tokio::test]
async fn openapi_document_is_3_1_and_covers_every_route() {
    let app = TestApp::spawn().await;
    let doc = app
        .request(Method::GET, "/openapi.json", None, None)
        .await
        .body;
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    let expected = [
        ("/healthz", "get"),
        ("/metrics", "get"),
        ("/openapi.json", "get"),
        ("/readyz", "get"),
        ("/v1/merchants", "post"),
        ("/v1/merchants/{id}", "patch"),
        ("/v1/products", "get"),
        ("/v1/products", "post"),
        ("/v1/products/{id}", "get"),
        ("/v1/products/{id}", "patch"),
        ("/v1/products/{id}", "delete"),
        ("/v1/inventory/{sku}", "get"),
        ("/v1/inventory/{sku}", "put"),
        ("/v1/reservations", "post"),
        ("/v1/reservations/{id}", "get"),
        ("/v1/reservations/{id}/release", "post"),
        ("/v1/checkouts", "post"),
        ("/v1/orders", "get"),
        ("/v1/orders/{id}", "get"),
        ("/v1/legacy-orders", "post"),
        ("/v1/legacy-orders/{id}", "get"),
    ];
    for (path, method) in expected {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} is documented"
        );
    }
}

#[tokio::test]
async fn unknown_routes_are_problem_404s() {
    let app = TestApp::spawn().await;
    app.request(Method::GET, "/v1/nothing-here", None, None)
        .await
        .assert_problem(404, "not-found");
}
