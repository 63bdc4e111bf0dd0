//! People (issue 37, items 1, 2 and 4): invitations by e-mail, roles,
//! sessions (cookie with CSRF, bearer), login throttling, operators and
//! suspension; each refusal a clear problem, with nothing changed.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{Body, Merchant, Response, TestApp, ADMIN_TOKEN};

const PASSWORD: &str = "plum orchard 1987";

/// The token of the latest invitation mailed to `to`, read from its e-mail.
async fn invitation_token(app: &TestApp, to: &str) -> String {
    let text: String = sqlx::query_scalar(
        "select text_body from mail_outbox where to_address = $1 order by created_at desc limit 1",
    )
    .bind(to)
    .fetch_one(&app.owner)
    .await
    .expect("an invitation e-mail was queued");
    let start = text.find("token=inv_").expect("a link with a token") + "token=".len();
    text[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

async fn invite(app: &TestApp, credential: &str, email: &str, role: &str) -> Response {
    app.post(
        "/v1/staff",
        credential,
        json!({"email": email, "role": role}),
    )
    .await
}

async fn accept(app: &TestApp, token: &str, password: &str) -> Response {
    app.request(
        Method::POST,
        "/v1/staff/accept",
        None,
        Some(json!({"token": token, "password": password})),
    )
    .await
}

/// A logged-in person: their bearer token, CSRF token and cookie header.
struct Session {
    token: String,
    csrf: String,
    cookie: String,
    body: Value,
}

async fn log_in(app: &TestApp, email: &str, password: &str) -> Response {
    app.request(
        Method::POST,
        "/v1/sessions",
        None,
        Some(json!({"email": email, "password": password})),
    )
    .await
}

async fn session(app: &TestApp, email: &str, password: &str) -> Session {
    let r = log_in(app, email, password).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let set_cookie = r.headers["set-cookie"].to_str().expect("ascii").to_owned();
    assert!(set_cookie.contains("HttpOnly"), "{set_cookie}");
    assert!(set_cookie.contains("SameSite=Lax"), "{set_cookie}");
    Session {
        token: r.body["token"].as_str().expect("token").to_owned(),
        csrf: r.body["csrf_token"].as_str().expect("csrf").to_owned(),
        cookie: set_cookie.split(';').next().expect("pair").to_owned(),
        body: r.body,
    }
}

/// A merchant whose owner (`owner@{slug}.test`) accepted the invitation the
/// merchant's first key sent, and is logged in.
async fn merchant_with_owner(app: &TestApp, slug: &str) -> (Merchant, Session) {
    let m = app.create_merchant(slug).await;
    let email = format!("owner@{slug}.test");
    let r = invite(app, &m.key, &email, "owner").await;
    assert_eq!(r.status, 201, "{}", r.body);
    let token = invitation_token(app, &email).await;
    let r = accept(app, &token, PASSWORD).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let owner = session(app, &email, PASSWORD).await;
    (m, owner)
}

#[tokio::test]
async fn an_owner_invites_a_colleague_whose_role_limits_them_and_the_trail_tells_it() {
    let app = TestApp::spawn().await;
    let (m, owner) = merchant_with_owner(&app, "acme").await;
    assert_eq!(owner.body["role"], "owner");
    assert_eq!(owner.body["merchant_id"], m.id.0.to_string());

    // The owner invites a viewer, with their session's bearer token.
    let r = invite(&app, &owner.token, "Vic@Acme.test", "viewer").await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["email"], "vic@acme.test");
    let token = invitation_token(&app, "vic@acme.test").await;
    // A weak password is refused, and the link still works after.
    accept(&app, &token, "password123")
        .await
        .assert_problem(422, "validation-error");
    let r = accept(&app, &token, "a long walk at dawn").await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["role"], "viewer");
    // Used once: refused after.
    accept(&app, &token, "a long walk at dawn")
        .await
        .assert_problem(409, "invitation-used");

    let vic = session(&app, "vic@acme.test", "a long walk at dawn").await;
    assert_eq!(vic.body["role"], "viewer");
    app.create_product(&m, "TEE", 1500).await;
    let listed = app.get("/v1/products", &vic.token).await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    let products = app.count("products").await;
    let r = app
        .post(
            "/v1/products",
            &vic.token,
            json!({"name": "Nope", "variants": [{"sku": "NOPE", "price": {"amount": 1, "currency": "EUR"}}]}),
        )
        .await;
    r.assert_problem(403, "role-forbids");
    assert_eq!(app.count("products").await, products, "nothing was made");
    // A viewer cannot raise their own role, nor invite anyone.
    let me = vic.body["person"]["id"].as_str().expect("id");
    app.request(
        Method::PATCH,
        &format!("/v1/staff/{me}"),
        Some(&vic.token),
        Some(json!({"role": "owner"})),
    )
    .await
    .assert_problem(403, "role-forbids");
    invite(&app, &vic.token, "eve@acme.test", "owner")
        .await
        .assert_problem(403, "role-forbids");
    // Nor make an API key beyond their role.
    let r = app
        .post(
            "/v1/api-keys",
            &vic.token,
            json!({"scopes": ["catalog:read"]}),
        )
        .await;
    r.assert_problem(403, "role-forbids");

    // The trail: the invitations, the joins and the logins, by e-mail.
    let trail = app.get("/v1/audit-log?limit=100", &owner.token).await;
    assert_eq!(trail.status, 200, "{}", trail.body);
    let seen: Vec<(String, String)> = trail.body["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|r| {
            (
                r["action"].as_str().unwrap_or("").to_owned(),
                r["actor"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    for expected in [
        ("staff.invite", "owner@acme.test"),
        ("staff.join", "vic@acme.test"),
        ("session.create", "vic@acme.test"),
        ("session.create", "owner@acme.test"),
        ("staff.join", "owner@acme.test"),
    ] {
        assert!(
            seen.iter().any(|(a, w)| a == expected.0 && w == expected.1),
            "{expected:?} missing from {seen:?}"
        );
    }
    // The viewer does not read the trail.
    app.get("/v1/audit-log", &vic.token)
        .await
        .assert_problem(403, "role-forbids");
}

#[tokio::test]
async fn a_cookie_session_needs_its_own_csrf_token_for_every_change() {
    let app = TestApp::spawn().await;
    let (_m, owner) = merchant_with_owner(&app, "acme").await;
    let other = session(&app, "owner@acme.test", PASSWORD).await;
    let body = || {
        Body::Json(
            json!({"name": "Tee", "variants": [{"sku": "TEE", "price": {"amount": 1500, "currency": "EUR"}}]}),
        )
    };
    let cookie = owner.cookie.as_str();
    for headers in [
        vec![("Cookie", cookie)],
        vec![("Cookie", cookie), ("X-CSRF-Token", other.csrf.as_str())],
        vec![("Cookie", cookie), ("X-CSRF-Token", "")],
    ] {
        app.request_with(Method::POST, "/v1/products", None, &headers, body())
            .await
            .assert_problem(403, "csrf-token-invalid");
    }
    assert_eq!(app.count("products").await, 0, "nothing was made");
    // Reading needs no CSRF token; a change with the right one goes through.
    let r = app
        .request_with(
            Method::GET,
            "/v1/products",
            None,
            &[("Cookie", cookie)],
            Body::Empty,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = app
        .request_with(
            Method::POST,
            "/v1/products",
            None,
            &[("Cookie", cookie), ("X-CSRF-Token", owner.csrf.as_str())],
            body(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    // Logged out: the cookie no longer works; the other session still does.
    let r = app
        .request_with(
            Method::DELETE,
            "/v1/sessions/current",
            None,
            &[("Cookie", cookie), ("X-CSRF-Token", owner.csrf.as_str())],
            Body::Empty,
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.body);
    app.request_with(
        Method::GET,
        "/v1/products",
        None,
        &[("Cookie", cookie)],
        Body::Empty,
    )
    .await
    .assert_problem(401, "unauthorized");
    assert_eq!(app.get("/v1/products", &other.token).await.status, 200);
}

#[tokio::test]
async fn a_wrong_password_and_an_unknown_address_get_the_same_answer_and_bursts_are_throttled_per_address(
) {
    let app = TestApp::spawn().await;
    let (_m, _owner) = merchant_with_owner(&app, "acme").await;
    let wrong = log_in(&app, "owner@acme.test", "not the password at all").await;
    let unknown = log_in(&app, "nobody@acme.test", "not the password at all").await;
    wrong.assert_problem(401, "unauthorized");
    unknown.assert_problem(401, "unauthorized");
    assert_eq!(wrong.body, unknown.body);

    // A burst of guesses from this address: throttled after five in all.
    let mut throttled = None;
    for _ in 0..8 {
        let r = log_in(&app, "owner@acme.test", "guess guess guess").await;
        if r.status == 429 {
            throttled = Some(r);
            break;
        }
        r.assert_problem(401, "unauthorized");
    }
    let throttled = throttled.expect("the burst was throttled");
    throttled.assert_problem(429, "login-throttled");
    assert!(throttled.headers.contains_key("retry-after"));
    // Even the right password waits, from this address.
    log_in(&app, "owner@acme.test", PASSWORD)
        .await
        .assert_problem(429, "login-throttled");
    // The owner, from another address, is not locked out.
    let elsewhere = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .expect("client");
    let r = elsewhere
        .post(format!("{}/v1/sessions", app.base))
        .json(&json!({"email": "owner@acme.test", "password": PASSWORD}))
        .send()
        .await
        .expect("answered");
    assert_eq!(r.status(), 201);
    // The failed logins are in the merchant's trail (written just after
    // their answers).
    let mut failed = 0;
    for _ in 0..50 {
        failed = app
            .count("audit_log where action = 'session.failed' and actor = 'owner@acme.test'")
            .await;
        if failed >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(failed >= 5, "{failed} failed logins recorded");
}

#[tokio::test]
async fn the_last_owner_stays_and_a_removed_person_is_logged_out() {
    let app = TestApp::spawn().await;
    let (_m, owner) = merchant_with_owner(&app, "acme").await;
    let me = owner.body["person"]["id"].as_str().expect("id").to_owned();
    app.request(
        Method::PATCH,
        &format!("/v1/staff/{me}"),
        Some(&owner.token),
        Some(json!({"role": "admin"})),
    )
    .await
    .assert_problem(409, "last-owner");
    app.request(
        Method::DELETE,
        &format!("/v1/staff/{me}"),
        Some(&owner.token),
        None,
    )
    .await
    .assert_problem(409, "last-owner");

    // An admin cannot touch the owner, nor make one.
    invite(&app, &owner.token, "ada@acme.test", "admin").await;
    let token = invitation_token(&app, "ada@acme.test").await;
    assert_eq!(accept(&app, &token, "ada's own password").await.status, 201);
    let ada = session(&app, "ada@acme.test", "ada's own password").await;
    app.request(
        Method::PATCH,
        &format!("/v1/staff/{me}"),
        Some(&ada.token),
        Some(json!({"role": "viewer"})),
    )
    .await
    .assert_problem(403, "role-forbids");
    let ada_id = ada.body["person"]["id"].as_str().expect("id").to_owned();
    app.request(
        Method::PATCH,
        &format!("/v1/staff/{ada_id}"),
        Some(&ada.token),
        Some(json!({"role": "owner"})),
    )
    .await
    .assert_problem(403, "role-forbids");
    let roles = app.get("/v1/staff", &owner.token).await;
    let roles: Vec<&str> = roles.body["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|m| m["role"].as_str())
        .collect();
    assert_eq!(roles, ["owner", "admin"], "nothing changed");

    // Removed: Ada's session ends at once.
    let r = app
        .request(
            Method::DELETE,
            &format!("/v1/staff/{ada_id}"),
            Some(&owner.token),
            None,
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.body);
    app.get("/v1/products", &ada.token)
        .await
        .assert_problem(401, "unauthorized");
    log_in(&app, "ada@acme.test", "ada's own password")
        .await
        .assert_problem(401, "unauthorized");
    // Another merchant's person is not found here.
    let (_other, stranger) = merchant_with_owner(&app, "globex").await;
    app.get(&format!("/v1/staff/{me}"), &stranger.token)
        .await
        .assert_problem(404, "not-found");
}

#[tokio::test]
async fn an_expired_invitation_is_gone() {
    let app = TestApp::spawn().await;
    let m = app.create_merchant("acme").await;
    invite(&app, &m.key, "late@acme.test", "staff").await;
    let token = invitation_token(&app, "late@acme.test").await;
    sqlx::query("update staff_invitations set expires_at = now() - interval '1 second'")
        .execute(&app.owner)
        .await
        .expect("expire");
    accept(&app, &token, PASSWORD)
        .await
        .assert_problem(410, "link-expired");
    assert_eq!(app.count("staff").await, 0);
    assert_eq!(app.count("people").await, 0);
    accept(&app, "inv_nonsense", PASSWORD)
        .await
        .assert_problem(404, "not-found");
}

async fn queued_mail(app: &TestApp, to: &str) -> String {
    sqlx::query_scalar("select status from mail_outbox where to_address = $1")
        .bind(to)
        .fetch_one(&app.owner)
        .await
        .expect("the message")
}

#[tokio::test]
async fn operators_suspend_a_merchant_whose_keys_staff_and_mail_stop_until_reactivated() {
    let app = TestApp::spawn().await;
    let (m, owner) = merchant_with_owner(&app, "acme").await;
    let _other = app.create_merchant("globex").await;

    // The admin token makes the first operator; the operator logs in.
    let r = app
        .post(
            "/v1/operators",
            ADMIN_TOKEN,
            json!({"email": "ops@platform.test", "password": "night shift rota 7"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let ops = session(&app, "ops@platform.test", "night shift rota 7").await;
    assert_eq!(ops.body["operator"], true);
    assert_eq!(ops.body["merchant_id"], Value::Null);
    // An operator's session is not a merchant's; a merchant's key is not an operator.
    app.get("/v1/products", &ops.token)
        .await
        .assert_problem(403, "forbidden");
    app.get("/v1/merchants", &m.key)
        .await
        .assert_problem(403, "forbidden");
    app.get("/v1/merchants", &owner.token)
        .await
        .assert_problem(403, "forbidden");

    let listed = app.get("/v1/merchants?q=AC", &ops.token).await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    let slugs: Vec<&str> = listed.body["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|m| m["slug"].as_str())
        .collect();
    assert_eq!(slugs, ["acme"]);
    assert_eq!(listed.body["data"][0]["cell"], "main");

    // Suspending needs a reason.
    let path = format!("/v1/merchants/{}", m.id.0);
    app.request(
        Method::PATCH,
        &path,
        Some(&ops.token),
        Some(json!({"status": "suspended"})),
    )
    .await
    .assert_problem(422, "validation-error");
    let r = app
        .request(
            Method::PATCH,
            &path,
            Some(&ops.token),
            Some(json!({"status": "suspended", "reason": "chargebacks under review"})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    app.get("/v1/products", &m.key)
        .await
        .assert_problem(403, "merchant-suspended");
    app.get("/v1/products", &owner.token)
        .await
        .assert_problem(403, "merchant-suspended");
    let suspended = app.get("/v1/merchants?status=suspended", &ops.token).await;
    assert_eq!(suspended.body["data"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        suspended.body["data"][0]["status_reason"],
        "chargebacks under review"
    );

    // Its mail waits: a message queued now is not sent while suspended.
    let mut tx = app.tenant_tx(&m).await;
    mercato::mail::enqueue(
        &mut tx,
        &mercato::mail::OutgoingMail {
            key: "suspension-test".into(),
            from: None,
            to: "shopper@example.com".into(),
            subject: "Your order".into(),
            text: "Thanks".into(),
            html: "<p>Thanks</p>".into(),
        },
    )
    .await
    .expect("queued");
    tx.commit().await.expect("commit");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(queued_mail(&app, "shopper@example.com").await, "queued");
    // The suspension is in the merchant's trail, by the operator.
    let recorded = app
        .count("audit_log where action = 'merchant.update' and actor = 'ops@platform.test' and changes::text like '%suspended%'")
        .await;
    assert_eq!(recorded, 1);
    let trail = app
        .get(
            &format!("{path}/audit-log?action=merchant.update"),
            &ops.token,
        )
        .await;
    assert_eq!(trail.status, 200, "{}", trail.body);
    assert_eq!(
        trail.body["data"][0]["actor"], "ops@platform.test",
        "{}",
        trail.body
    );
    app.get(&format!("{path}/audit-log"), &m.key)
        .await
        .assert_problem(403, "forbidden");

    // Reactivated: everything resumes, nothing was lost.
    let r = app
        .request(
            Method::PATCH,
            &path,
            Some(&ops.token),
            Some(json!({"status": "active"})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(app.get("/v1/products", &m.key).await.status, 200);
    assert_eq!(app.get("/v1/products", &owner.token).await.status, 200);
    let mut sent = String::new();
    for _ in 0..100 {
        sent = queued_mail(&app, "shopper@example.com").await;
        if sent == "sent" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(sent, "sent");
}

#[tokio::test]
async fn a_second_factor_is_asked_once_turned_on() {
    let app = TestApp::spawn().await;
    let (_m, owner) = merchant_with_owner(&app, "acme").await;
    let r = app
        .post("/v1/sessions/current/totp", &owner.token, json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let secret = r.body["secret"].as_str().expect("secret").to_owned();
    app.post(
        "/v1/sessions/current/totp",
        &owner.token,
        json!({"secret": secret, "code": "000000"}),
    )
    .await
    .assert_problem(422, "validation-error");
    let code = totp_now(&secret);
    let r = app
        .post(
            "/v1/sessions/current/totp",
            &owner.token,
            json!({"secret": secret, "code": code}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    log_in(&app, "owner@acme.test", PASSWORD)
        .await
        .assert_problem(401, "second-factor-required");
    let r = app
        .request(
            Method::POST,
            "/v1/sessions",
            None,
            Some(json!({"email": "owner@acme.test", "password": PASSWORD, "totp_code": totp_now(&secret)})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
}

/// The current code of a base32 secret, computed here independently of the
/// service (RFC 6238 with HMAC-SHA-1).
fn totp_now(secret: &str) -> String {
    use hmac::{Hmac, Mac};
    let mut bytes = Vec::new();
    let (mut buffer, mut bits) = (0u32, 0u32);
    for c in secret.chars() {
        let v = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567".find(c).expect("base32") as u32;
        buffer = (buffer << 5) | v;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            bytes.push((buffer >> bits) as u8);
        }
    }
    let counter = (chrono::Utc::now().timestamp() / 30) as u64;
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(&bytes).expect("key");
    mac.update(&counter.to_be_bytes());
    let d = mac.finalize().into_bytes();
    let o = (d[19] & 0x0f) as usize;
    let n = u32::from_be_bytes([d[o] & 0x7f, d[o + 1], d[o + 2], d[o + 3]]) % 1_000_000;
    format!("{n:06}")
}

#[tokio::test]
async fn a_person_on_two_staffs_accepts_with_their_password_and_guesses_are_throttled() {
    let app = TestApp::spawn().await;
    let (_acme, _owner) = merchant_with_owner(&app, "acme").await;
    let globex = app.create_merchant("globex").await;
    let r = invite(&app, &globex.key, "owner@acme.test", "support").await;
    assert_eq!(r.status, 201, "{}", r.body);
    let token = invitation_token(&app, "owner@acme.test").await;
    let mut throttled = false;
    for _ in 0..8 {
        let r = accept(&app, &token, "a guess at the password").await;
        if r.status == 429 {
            r.assert_problem(429, "login-throttled");
            throttled = true;
            break;
        }
        r.assert_problem(422, "validation-error");
        assert_eq!(r.error_fields(), ["password"]);
    }
    assert!(
        throttled,
        "guesses through an invitation are throttled like logins"
    );
    assert_eq!(app.count("staff").await, 1, "nothing joined");
    // From another address, their own password joins them.
    let elsewhere = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 3]))
        .build()
        .expect("client");
    let r = elsewhere
        .post(format!("{}/v1/staff/accept", app.base))
        .json(&json!({"token": token, "password": PASSWORD}))
        .send()
        .await
        .expect("answered");
    assert_eq!(r.status(), 201);
    let r = app
        .request(
            Method::POST,
            "/v1/sessions",
            None,
            Some(json!({"email": "owner@acme.test", "password": PASSWORD, "merchant_id": globex.id.0})),
        )
        .await;
    // This address is still throttled for the account.
    r.assert_problem(429, "login-throttled");
    let r = elsewhere
        .post(format!("{}/v1/sessions", app.base))
        .json(
            &json!({"email": "owner@acme.test", "password": PASSWORD, "merchant_id": globex.id.0}),
        )
        .send()
        .await
        .expect("answered");
    assert_eq!(r.status(), 201);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["role"], "support");
    assert_eq!(body["merchant_id"], globex.id.0.to_string());
}
