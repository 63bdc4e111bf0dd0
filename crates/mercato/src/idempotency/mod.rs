//! `Idempotency-Key` on POSTs, with Stripe's semantics: the same key and body
//! answer the first response again (`Idempotent-Replayed: true`); the same key
//! with another body is a 422; the same key while the first is running is a 409.
//! Keys belong to a merchant and expire after 24 hours.
//!
//! As Stripe does, a response is stored once the operation has started to act:
//! 2xx (202 pending included), 402 (payment failed) and 409 (a conflict with the
//! state, such as out of stock). Nothing is stored when the request never got
//! that far (400, 401, 403, 404, 413, 415, 422 invalid input) or failed on our
//! side (5xx): a corrected or later retry under the same key runs afresh. The
//! checkout itself also keys its order by the idempotency key, so a retry after
//! a crash finds the order instead of placing a second one.
//!
//! Owns table `idempotency_keys`. The header itself is parsed by the web
//! plumbing (`http::idempotency`); this layer needs the merchant, so it is
//! mounted by `routes.rs` inside `http::with_plumbing`.

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use crate::db::text_enum;
use crate::http::idempotency::{idempotency_key, ShownOnce, IDEMPOTENCY_KEY};
use crate::http::ApiError;
use crate::state::AppState;
use crate::tenancy::{request_tenant, Tenant};

const REPLAYED: &str = "idempotent-replayed";
/// axum's default body limit, which the handlers enforce too.
const MAX_BODY: usize = 2 << 20;
/// An in-flight key older than this belongs to a request that died with its process.
const ABANDONED_AFTER_SECONDS: f64 = 60.0;

text_enum! {
    /// Where the request under a key stands.
    enum KeyStatus {
        /// Running (or died with its process: see `ABANDONED_AFTER_SECONDS`).
        InFlight = "in_flight",
        /// Finished; the stored response is replayed.
        Done = "done",
    }
}

struct StoredKey {
    request_hash: Vec<u8>,
    status: KeyStatus,
    response_status: Option<i32>,
    response_content_type: Option<String>,
    response_body: Option<Vec<u8>>,
    /// For a key in flight: seconds until it counts as abandoned.
    retry_after: i64,
}

enum Claim {
    Claimed,
    Replay {
        status: i32,
        content_type: Option<String>,
        body: Vec<u8>,
    },
    Reused,
    /// Seconds until the running request is presumed dead and the key can be retried.
    InFlight(u64),
}

/// Whether a response means the operation acted, so its answer is the key's for good.
fn worth_storing(status: StatusCode) -> bool {
    status.is_success() || status == StatusCode::PAYMENT_REQUIRED || status == StatusCode::CONFLICT
}

pub async fn idempotency(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if req.method() != Method::POST || !req.headers().contains_key(IDEMPOTENCY_KEY) {
        return next.run(req).await;
    }
    match handle(&state, req, next).await {
        Ok(response) | Err(response) => response,
    }
}

async fn handle(state: &AppState, req: Request, next: Next) -> Result<Response, Response> {
    let key = match idempotency_key(req.headers()) {
        Ok(Some(key)) => key.to_owned(),
        // The layer runs only for requests that carry the header.
        Ok(None) => return Ok(next.run(req).await),
        Err(invalid) => return Err(invalid.into_response()),
    };
    // Keys are per merchant; a request that is not a merchant's gets no idempotency.
    let tenant = match request_tenant(state, req.method(), req.extensions(), req.headers()).await {
        Ok(tenant) => tenant,
        Err(_) => return Ok(next.run(req).await),
    };
    let (mut parts, body) = req.into_parts();
    let bytes = to_bytes(body, MAX_BODY)
        .await
        .map_err(|_| ApiError::PayloadTooLarge.into_response())?;
    let mut hasher = Sha256::new();
    hasher.update(parts.method.as_str());
    hasher.update(parts.uri.to_string());
    // The same JSON with other whitespace or key order is the same request.
    match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(json) => hasher.update(json.to_string()),
        Err(_) => hasher.update(&bytes),
    }
    let hash = hasher.finalize().to_vec();

    match claim(&tenant, &key, &hash)
        .await
        .map_err(|e| ApiError::from(e).into_response())?
    {
        Claim::Reused => return Err(ApiError::IdempotencyKeyReused.into_response()),
        Claim::InFlight(retry_after) => {
            return Err(ApiError::IdempotencyKeyInFlight { retry_after }.into_response())
        }
        Claim::Replay {
            status,
            content_type,
            body,
        } => {
            let status = StatusCode::from_u16(status as u16).unwrap_or(StatusCode::OK);
            let mut response = (status, body).into_response();
            if let Some(ct) = content_type.and_then(|ct| HeaderValue::from_str(&ct).ok()) {
                response.headers_mut().insert(header::CONTENT_TYPE, ct);
            }
            response
                .headers_mut()
                .insert(REPLAYED, HeaderValue::from_static("true"));
            return Ok(response);
        }
        Claim::Claimed => {}
    }

    parts.extensions.insert(tenant.clone());
    let response = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    let (parts, body) = response.into_parts();
    let body = match to_bytes(body, usize::MAX).await {
        Ok(body) => body,
        Err(err) => {
            // Storing an empty body would replay it for 24 h: forget the key so a retry runs.
            tracing::error!(error = %err, "reading the response to store it failed");
            if let Err(err) = finish(&tenant, &key, None).await {
                tracing::error!(error = %err, "forgetting the idempotency key failed");
            }
            return Err(ApiError::Unavailable(
                "the response could not be recorded; retry with the same Idempotency-Key",
            )
            .into_response());
        }
    };
    // An answer that shows a secret once is stored without it.
    let stored = match parts.extensions.get::<ShownOnce>() {
        Some(secret) => secret.redact(&body),
        None => Some(body.to_vec()),
    };
    let keep = worth_storing(parts.status) && stored.is_some();
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let stored = stored.unwrap_or_default();
    if let Err(err) = finish(
        &tenant,
        &key,
        keep.then_some((parts.status.as_u16(), content_type, &stored[..])),
    )
    .await
    {
        tracing::error!(error = %err, "storing the idempotent response failed");
    }
    Ok(Response::from_parts(parts, Body::from(body)))
}

async fn claim(tenant: &Tenant, key: &str, hash: &[u8]) -> Result<Claim, sqlx::Error> {
    let mut tx = tenant.begin_sql().await?;
    let merchant = tx.merchant_id().0;
    let claimed = sqlx::query!(
        "insert into idempotency_keys (merchant_id, key, request_hash, status, expires_at)
         values ($1, $2, $3, 'in_flight', now() + interval '24 hours')
         on conflict (merchant_id, key) do update
            set request_hash = excluded.request_hash, status = 'in_flight', response_status = null,
                response_content_type = null, response_body = null, created_at = now(),
                expires_at = excluded.expires_at
          where idempotency_keys.expires_at < now()
             or (idempotency_keys.status = 'in_flight'
                 and idempotency_keys.request_hash = excluded.request_hash
                 and idempotency_keys.created_at < now() - make_interval(secs => $4))",
        merchant,
        key,
        hash,
        ABANDONED_AFTER_SECONDS,
    )
    .execute(tx.conn())
    .await?;
    if claimed.rows_affected() == 1 {
        tx.commit().await?;
        return Ok(Claim::Claimed);
    }
    let stored = sqlx::query_as!(
        StoredKey,
        r#"select request_hash, status as "status: KeyStatus", response_status,
                  response_content_type, response_body,
                  greatest(1, ceil(extract(epoch from
                      created_at + make_interval(secs => $3) - now())))::bigint as "retry_after!"
         from idempotency_keys where merchant_id = $1 and key = $2"#,
        merchant,
        key,
        ABANDONED_AFTER_SECONDS,
    )
    .fetch_one(tx.conn())
    .await?;
    tx.commit().await?;
    Ok(if stored.request_hash != hash {
        Claim::Reused
    } else if stored.status == KeyStatus::InFlight {
        Claim::InFlight(stored.retry_after.max(1) as u64)
    } else {
        Claim::Replay {
            status: stored.response_status.unwrap_or(200),
            content_type: stored.response_content_type,
            body: stored.response_body.unwrap_or_default(),
        }
    })
}

/// Stores the response to replay, or forgets the key so a retry runs again.
async fn finish(
    tenant: &Tenant,
    key: &str,
    response: Option<(u16, Option<String>, &[u8])>,
) -> Result<(), sqlx::Error> {
    let mut tx = tenant.begin_sql().await?;
    let merchant = tx.merchant_id().0;
    match response {
        Some((status, content_type, body)) => {
            sqlx::query!(
                "update idempotency_keys set status = 'done', response_status = $3,
                        response_content_type = $4, response_body = $5
                 where merchant_id = $1 and key = $2",
                merchant,
                key,
                i32::from(status),
                content_type,
                body,
            )
            .execute(tx.conn())
            .await?;
        }
        None => {
            sqlx::query!(
                "delete from idempotency_keys where merchant_id = $1 and key = $2",
                merchant,
                key,
            )
            .execute(tx.conn())
            .await?;
        }
    }
    tx.commit().await
}
