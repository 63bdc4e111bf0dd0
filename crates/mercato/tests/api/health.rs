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

/// Every family /metrics shows has its `# HELP` (what it counts) and the
/// kind it is described as; and `promtool check metrics` (Prometheus's own
/// linter, installed by .ci/run) finds nothing to say, where it is installed.
#[tokio::test]
async fn every_metric_family_has_help_text_and_promtool_finds_no_problem() {
    use mercato::http::metrics::{Kind, FAMILIES};
    let app = TestApp::spawn().await;
    // A sale records families of several contexts (checkout, inventory, events).
    let m = app.merchant_with_stock("acme", "TEE", 5).await;
    let body = serde_json::json!({"customer": {"email": "ann@example.com"},
        "items": [{"sku": "TEE", "quantity": 1}], "payment_method": "pm_card_ok"});
    let order = app.post("/v1/checkouts", &m.key, body).await;
    assert_eq!(order.status, 201, "{}", order.body);
    let text = app.metrics().await;
    let mut help = std::collections::BTreeMap::new();
    let mut types = std::collections::BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, what) = rest.split_once(' ').unwrap_or((rest, ""));
            help.insert(name.to_owned(), what.trim().to_owned());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            types.insert(name.to_owned(), kind.to_owned());
        }
    }
    assert!(types.len() >= 5, "a sale records several families:\n{text}");
    for (name, kind) in &types {
        assert!(
            help.get(name).is_some_and(|h| !h.is_empty()),
            "{name} has no # HELP:\n{text}"
        );
        let described = FAMILIES
            .iter()
            .find(|f| f.name == *name)
            .unwrap_or_else(|| panic!("{name} is not in FAMILIES"));
        // A histogram without buckets of its own is exposed as a summary.
        let exposed_as: &[&str] = match described.kind {
            Kind::Counter => &["counter"],
            Kind::Gauge => &["gauge"],
            Kind::Histogram => &["histogram", "summary"],
        };
        assert!(exposed_as.contains(&kind.as_str()), "{name} is a {kind}");
    }
    match std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Ok(mut promtool) => {
            use std::io::Write;
            promtool
                .stdin
                .take()
                .expect("stdin")
                .write_all(text.as_bytes())
                .expect("write to promtool");
            let out = promtool.wait_with_output().expect("promtool runs");
            assert!(
                out.status.success() && out.stdout.is_empty(),
                "promtool check metrics: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!(
                "promtool not installed: HELP and kinds checked here, Prometheus's lint not run"
            );
        }
        Err(e) => panic!("promtool: {e}"),
    }
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
