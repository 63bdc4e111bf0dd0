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
async fn openapi_document_is_3_1_and_every_route_in_it_is_served() {
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
    let paths = doc["paths"].as_object().expect("paths");
    // The contract's anchors: if routes stopped being registered with their docs,
    // these would vanish from the document.
    for path in ["/healthz", "/openapi.json", "/v1/products", "/v1/checkouts"] {
        assert!(paths.contains_key(path), "{path} is documented");
    }
    let all_methods = ["get", "post", "put", "patch", "delete"];
    let mut operations = 0;
    for (path, item) in paths {
        // Any value will do for a path parameter: the route must match, not succeed.
        let concrete = path
            .replace("{id}", "00000000-0000-0000-0000-000000000000")
            .replace("{sku}", "SKU-1");
        for method in all_methods {
            let documented = item[method].is_object();
            let verb = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let resp = app.request(verb, &concrete, None, None).await;
            let unrouted = resp.status == 404 && resp.body["detail"] == "route not found";
            if documented {
                operations += 1;
                assert!(
                    !unrouted && resp.status != 405,
                    "{method} {path} is documented but not served: {} {}",
                    resp.status,
                    resp.body
                );
            } else {
                assert_eq!(
                    resp.status, 405,
                    "{method} {path} is served but not documented: {}",
                    resp.body
                );
            }
        }
    }
    assert!(operations >= 20, "only {operations} operations documented");
}

/// What a generated client needs, checked here so `cargo nextest` catches it
/// too (scripts/check-contract lints the whole document): a parameter declared
/// `in: path` that is not in the path is sent nowhere by a client.
#[tokio::test]
async fn openapi_path_parameters_are_in_their_paths_and_operations_say_summary_and_security() {
    let app = TestApp::spawn().await;
    let doc = app
        .request(Method::GET, "/openapi.json", None, None)
        .await
        .body;
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().unwrap() {
            let params = op["parameters"].as_array().cloned().unwrap_or_default();
            for p in &params {
                let name = p["name"].as_str().unwrap();
                if p["in"] == "path" {
                    assert!(
                        path.contains(&format!("{{{name}}}")),
                        "{method} {path}: `{name}` is declared in: path"
                    );
                    assert_eq!(p["required"], true, "{method} {path}: {name}");
                }
            }
            for segment in path.split('/').filter(|s| s.starts_with('{')) {
                let name = segment.trim_matches(|c| c == '{' || c == '}');
                assert!(
                    params
                        .iter()
                        .any(|p| p["name"] == name && p["in"] == "path"),
                    "{method} {path}: `{name}` is not declared"
                );
            }
            assert!(op["summary"].is_string(), "{method} {path}: summary");
            assert!(op["security"].is_array(), "{method} {path}: security");
        }
    }
}

#[tokio::test]
async fn unknown_routes_are_problem_404s() {
    let app = TestApp::spawn().await;
    app.request(Method::GET, "/v1/nothing-here", None, None)
        .await
        .assert_problem(404, "not-found");
}
