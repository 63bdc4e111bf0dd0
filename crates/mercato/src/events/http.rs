use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::model::{check_url, is_internal, new_secret, EventType};
use super::store::{self, EndpointRow, EndpointStatus};
use crate::http::idempotency::ShownOnce;
use crate::http::{ApiError, ApiJson, ApiQuery, Problem};
use crate::pagination::{List, Page};
use crate::state::AppState;
use crate::tenancy::Tenant;
use crate::validation::FieldErrors;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_events))
        .routes(routes!(get_event))
        .routes(routes!(list_endpoints, post_endpoint))
        .routes(routes!(get_endpoint, patch_endpoint, delete_endpoint))
        .routes(routes!(rotate_secret))
        .routes(routes!(recover))
        .routes(routes!(list_deliveries))
}

/// An event: what happened, to the merchant, when; `data` is versioned by type.
#[derive(Serialize, ToSchema)]
pub struct Event {
    pub id: Uuid,
    #[serde(rename = "type")]
    pub kind: String,
    pub version: i32,
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
    pub occurred_at: DateTime<Utc>,
}

impl TryFrom<store::EventRow> for Event {
    type Error = ApiError;
    fn try_from(r: store::EventRow) -> Result<Self, ApiError> {
        let data = serde_json::from_str(&r.payload).map_err(|e| {
            ApiError::Internal(sqlx::Error::Decode(
                format!("stored event payload: {e}").into(),
            ))
        })?;
        Ok(Event {
            id: r.id,
            kind: r.kind,
            version: r.version,
            data,
            occurred_at: r.occurred_at,
        })
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EventParams {
    /// Only events of this type (`order.confirmed`, …).
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub kind: Option<String>,
    /// Page size, 1 to 500 (default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 500, default = 50)]
    pub limit: Option<String>,
    /// Opaque cursor from a previous page's `next_cursor`.
    pub cursor: Option<String>,
}

fn event_type(raw: &str) -> Result<EventType, String> {
    EventType::parse(raw)
}

/// The merchant's events, oldest first (cursor pagination).
#[utoipa::path(get, path = "/v1/events", params(EventParams), security(("api_key" = [])),
    tag = "events", responses((status = 200, body = List<Event>)))]
pub async fn list_events(
    tenant: Tenant,
    ApiQuery(params): ApiQuery<EventParams>,
) -> Result<Json<List<Event>>, ApiError> {
    let page = Page::parse(&crate::pagination::PageParams {
        limit: params.limit.clone(),
        cursor: params.cursor.clone(),
    })?;
    let mut errors = FieldErrors::default();
    let kind = match &params.kind {
        None => Some(None),
        Some(k) => errors.check("type", event_type(k)).map(Some),
    };
    let kind = errors.finish(kind)?;
    let mut tx = tenant.begin().await?;
    let rows = store::events(
        &mut tx,
        kind.map(EventType::as_str),
        page.after,
        page.fetch_limit(),
    )
    .await?;
    tx.commit().await?;
    let events = rows
        .into_iter()
        .map(Event::try_from)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(List::from_rows(events, page, |e| e.id)))
}

/// One of the merchant's events.
#[utoipa::path(get, path = "/v1/events/{id}", params(("id" = String, Path)),
    security(("api_key" = [])), tag = "events",
    responses(
        (status = 200, body = Event),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_event(tenant: Tenant, Path(id): Path<String>) -> Result<Json<Event>, ApiError> {
    let id = ApiError::path_id(&id, "event")?;
    let mut tx = tenant.begin().await?;
    let event = store::event(&mut tx, id).await?;
    tx.commit().await?;
    let event = event.ok_or(ApiError::NotFound("event"))?;
    Ok(Json(event.try_into()?))
}

/// A webhook endpoint (its secret is shown only when created or rotated).
#[derive(Serialize, ToSchema)]
pub struct Endpoint {
    pub id: Uuid,
    pub url: String,
    pub description: Option<String>,
    pub event_types: Vec<String>,
    pub status: EndpointStatus,
    /// Why it is disabled (by the merchant, or after a long run of failures).
    pub disabled_reason: Option<String>,
    /// `whsec_…`: only in the answers to creation and rotation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

fn endpoint_view(row: EndpointRow, show_secret: bool) -> Endpoint {
    Endpoint {
        id: row.id,
        url: row.url,
        description: row.description,
        event_types: row.event_types,
        status: row.status,
        disabled_reason: row.disabled_reason,
        secret: show_secret.then_some(row.secret),
        created_at: row.created_at,
        updated_at: row.updated_at,
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointBody {
    /// Where deliveries are POSTed (http or https).
    pub url: String,
    /// The event types it receives (at least one).
    pub event_types: Vec<String>,
    pub description: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointPatch {
    pub url: Option<String>,
    pub event_types: Option<Vec<String>>,
    pub description: Option<String>,
    /// `enabled` or `disabled`.
    pub status: Option<String>,
}

/// A receiver URL as the API accepts it: http(s), and (outside development) not
/// resolving to an internal address. Checked again at each delivery.
async fn receiver_url(raw: &str, allow_internal: bool) -> Result<String, String> {
    let url = check_url(raw)?;
    if !allow_internal {
        let host = url.host_str().unwrap_or_default().trim_matches(['[', ']']);
        let port = url.port_or_known_default().unwrap_or(443);
        let lookup = tokio::net::lookup_host((host, port));
        let addrs: Vec<std::net::SocketAddr> =
            tokio::time::timeout(std::time::Duration::from_secs(5), lookup)
                .await
                .map_err(|_| format!("host {host} did not resolve within 5 s"))?
                .map_err(|_| format!("host {host} does not resolve"))?
                .collect();
        if addrs.is_empty() || addrs.iter().any(|a| is_internal(a.ip())) {
            return Err(format!(
                "host {host} resolves to an internal address (loopback, private, link-local or metadata)"
            ));
        }
    }
    Ok(url.to_string())
}

fn event_types(field: &str, raw: &[String], errors: &mut FieldErrors) -> Option<Vec<String>> {
    if raw.is_empty() {
        errors.push(field, "must name at least one event type");
        return None;
    }
    let mut ok = true;
    for (i, t) in raw.iter().enumerate() {
        if let Err(e) = event_type(t) {
            errors.push(format!("{field}[{i}]"), e);
            ok = false;
        }
    }
    let unique: std::collections::BTreeSet<&String> = raw.iter().collect();
    ok.then(|| unique.into_iter().cloned().collect())
}

const MAX_DESCRIPTION: usize = 500;

fn description(raw: Option<&String>, errors: &mut FieldErrors) -> Option<Option<String>> {
    match raw {
        Some(d) if d.chars().count() > MAX_DESCRIPTION || d.contains('\0') => {
            errors.push(
                "description",
                format!("must be at most {MAX_DESCRIPTION} characters"),
            );
            None
        }
        other => Some(other.cloned()),
    }
}

/// Subscribes a URL to event types. The answer holds the signing secret
/// (`whsec_…`), shown this once.
#[utoipa::path(post, path = "/v1/webhook-endpoints", request_body = EndpointBody,
    security(("api_key" = [])), tag = "events",
    responses(
        (status = 201, body = Endpoint),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn post_endpoint(
    State(state): State<AppState>,
    tenant: Tenant,
    ApiJson(body): ApiJson<EndpointBody>,
) -> Result<(StatusCode, Extension<ShownOnce>, Json<Endpoint>), ApiError> {
    let mut errors = FieldErrors::default();
    let url = errors.check(
        "url",
        receiver_url(&body.url, state.webhooks.allow_internal).await,
    );
    let types = event_types("event_types", &body.event_types, &mut errors);
    let description = description(body.description.as_ref(), &mut errors);
    let ((url, types), description) = errors.finish(url.zip(types).zip(description))?;
    let id = Uuid::now_v7();
    let mut tx = tenant.begin_audited("webhook_endpoint.create").await?;
    store::insert_endpoint(
        &mut tx,
        id,
        &url,
        description.as_deref(),
        &types,
        &new_secret(),
    )
    .await?;
    let row = store::endpoint(&mut tx, id)
        .await?
        .ok_or(ApiError::NotFound("webhook endpoint"))?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        Extension(ShownOnce(&["secret"])),
        Json(endpoint_view(row, true)),
    ))
}

#[derive(Serialize, ToSchema)]
pub struct EndpointList {
    pub data: Vec<Endpoint>,
}

/// The merchant's webhook endpoints (without their secrets).
#[utoipa::path(get, path = "/v1/webhook-endpoints", security(("api_key" = [])), tag = "events",
    responses((status = 200, body = EndpointList)))]
pub async fn list_endpoints(tenant: Tenant) -> Result<Json<EndpointList>, ApiError> {
    let mut tx = tenant.begin().await?;
    let rows = store::endpoints(&mut tx).await?;
    tx.commit().await?;
    Ok(Json(EndpointList {
        data: rows.into_iter().map(|r| endpoint_view(r, false)).collect(),
    }))
}

fn endpoint_id(raw: &str) -> Result<Uuid, ApiError> {
    ApiError::path_id(raw, "webhook endpoint")
}

/// A webhook endpoint (without its secret).
#[utoipa::path(get, path = "/v1/webhook-endpoints/{id}", params(("id" = String, Path)),
    security(("api_key" = [])), tag = "events",
    responses(
        (status = 200, body = Endpoint),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_endpoint(
    tenant: Tenant,
    Path(id): Path<String>,
) -> Result<Json<Endpoint>, ApiError> {
    let id = endpoint_id(&id)?;
    let mut tx = tenant.begin().await?;
    let row = store::endpoint(&mut tx, id).await?;
    tx.commit().await?;
    row.map(|r| Json(endpoint_view(r, false)))
        .ok_or(ApiError::NotFound("webhook endpoint"))
}

/// Changes an endpoint's URL, event types or description, or disables and
/// enables it (enabling starts its failure count afresh).
#[utoipa::path(patch, path = "/v1/webhook-endpoints/{id}", params(("id" = String, Path)),
    request_body = EndpointPatch, security(("api_key" = [])), tag = "events",
    responses(
        (status = 200, body = Endpoint),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn patch_endpoint(
    State(state): State<AppState>,
    tenant: Tenant,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<EndpointPatch>,
) -> Result<Json<Endpoint>, ApiError> {
    let id = endpoint_id(&id)?;
    let mut errors = FieldErrors::default();
    let url = match &body.url {
        None => Some(None),
        Some(u) => errors
            .check("url", receiver_url(u, state.webhooks.allow_internal).await)
            .map(Some),
    };
    let types = match &body.event_types {
        None => Some(None),
        Some(t) => event_types("event_types", t, &mut errors).map(Some),
    };
    let status = match &body.status {
        None => Some(None),
        Some(s) => errors.check("status", EndpointStatus::parse(s)).map(Some),
    };
    let description = description(body.description.as_ref(), &mut errors);
    let (((url, types), status), description) =
        errors.finish(url.zip(types).zip(status).zip(description))?;
    let mut tx = tenant.begin_audited("webhook_endpoint.update").await?;
    let found = store::update_endpoint(
        &mut tx,
        id,
        url.as_deref(),
        description.as_deref(),
        types.as_deref(),
        status,
    )
    .await?;
    let row = if found {
        store::endpoint(&mut tx, id).await?
    } else {
        None
    };
    tx.commit().await?;
    row.map(|r| Json(endpoint_view(r, false)))
        .ok_or(ApiError::NotFound("webhook endpoint"))
}

/// Deletes a webhook endpoint and its pending deliveries.
#[utoipa::path(delete, path = "/v1/webhook-endpoints/{id}", params(("id" = String, Path)),
    security(("api_key" = [])), tag = "events",
    responses(
        (status = 204, description = "Deleted, with its pending deliveries"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn delete_endpoint(
    tenant: Tenant,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = endpoint_id(&id)?;
    let mut tx = tenant.begin_audited("webhook_endpoint.delete").await?;
    let deleted = store::delete_endpoint(&mut tx, id).await?;
    tx.commit().await?;
    if deleted {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound("webhook endpoint"))
    }
}

/// How long the previous secret keeps signing after a rotation.
const ROTATION_OVERLAP_HOURS: i64 = 24;

/// A new signing secret. For 24 hours every delivery carries two signatures
/// (`webhook-signature: v1,<new> v1,<old>`), so receivers can switch at leisure.
#[utoipa::path(post, path = "/v1/webhook-endpoints/{id}/rotate-secret", params(("id" = String, Path)),
    security(("api_key" = [])), tag = "events",
    responses(
        (status = 200, body = Endpoint),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn rotate_secret(
    tenant: Tenant,
    Path(id): Path<String>,
) -> Result<(Extension<ShownOnce>, Json<Endpoint>), ApiError> {
    let id = endpoint_id(&id)?;
    let until = Utc::now() + chrono::Duration::hours(ROTATION_OVERLAP_HOURS);
    let mut tx = tenant
        .begin_audited("webhook_endpoint.rotate_secret")
        .await?;
    let rotated = store::rotate_secret(&mut tx, id, &new_secret(), until).await?;
    let row = if rotated {
        store::endpoint(&mut tx, id).await?
    } else {
        None
    };
    tx.commit().await?;
    row.map(|r| {
        (
            Extension(ShownOnce(&["secret"])),
            Json(endpoint_view(r, true)),
        )
    })
    .ok_or(ApiError::NotFound("webhook endpoint"))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecoverBody {
    /// Deliveries created since then (RFC 3339) that are dead, or failed and
    /// waiting for a retry, are sent again now.
    pub since: String,
}

#[derive(Serialize, ToSchema)]
pub struct Recovered {
    pub recovered: u64,
}

/// Sends an endpoint's dead (or failed and waiting) deliveries since a time again, now.
#[utoipa::path(post, path = "/v1/webhook-endpoints/{id}/recover", params(("id" = String, Path)),
    request_body = RecoverBody, security(("api_key" = [])), tag = "events",
    responses(
        (status = 200, body = Recovered),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn recover(
    tenant: Tenant,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<RecoverBody>,
) -> Result<Json<Recovered>, ApiError> {
    let id = endpoint_id(&id)?;
    let since = DateTime::parse_from_rfc3339(&body.since)
        .map_err(|_| {
            ApiError::field(
                "since",
                "must be an RFC 3339 time, e.g. 2026-11-25T10:00:00Z",
            )
        })?
        .with_timezone(&Utc);
    let mut tx = tenant.begin_audited("webhook_endpoint.recover").await?;
    if store::endpoint(&mut tx, id).await?.is_none() {
        return Err(ApiError::NotFound("webhook endpoint"));
    }
    let recovered = store::recover(&mut tx, id, since).await?;
    tx.commit().await?;
    Ok(Json(Recovered { recovered }))
}

/// One attempt of a delivery.
#[derive(Serialize, ToSchema)]
pub struct DeliveryAttempt {
    pub attempt: i32,
    pub status_code: Option<i32>,
    pub latency_ms: i32,
    pub error: Option<String>,
    /// The first KB of the receiver's answer.
    pub response: Option<String>,
    pub at: DateTime<Utc>,
}

#[derive(Serialize, ToSchema)]
pub struct Delivery {
    pub id: Uuid,
    pub event_id: Uuid,
    pub event_type: String,
    pub status: store::DeliveryStatus,
    /// Attempts made so far.
    pub attempt_count: i32,
    /// When it is (or was last) due.
    pub next_attempt_at: DateTime<Utc>,
    pub last_status_code: Option<i32>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub attempts: Vec<DeliveryAttempt>,
}

#[derive(Serialize, ToSchema)]
pub struct DeliveryList {
    /// Newest first (at most 100).
    pub data: Vec<Delivery>,
}

/// Every delivery to an endpoint and each of its attempts: status code,
/// latency, error and the first KB of the answer.
#[utoipa::path(get, path = "/v1/webhook-endpoints/{id}/deliveries", params(("id" = String, Path)),
    security(("api_key" = [])), tag = "events",
    responses(
        (status = 200, body = DeliveryList),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_deliveries(
    tenant: Tenant,
    Path(id): Path<String>,
) -> Result<Json<DeliveryList>, ApiError> {
    let id = endpoint_id(&id)?;
    let mut tx = tenant.begin().await?;
    if store::endpoint(&mut tx, id).await?.is_none() {
        return Err(ApiError::NotFound("webhook endpoint"));
    }
    let (deliveries, attempts) = store::deliveries(&mut tx, id, 100).await?;
    tx.commit().await?;
    let mut by_delivery: BTreeMap<Uuid, Vec<DeliveryAttempt>> = BTreeMap::new();
    for a in attempts {
        by_delivery
            .entry(a.delivery_id)
            .or_default()
            .push(DeliveryAttempt {
                attempt: a.attempt,
                status_code: a.status_code,
                latency_ms: a.latency_ms,
                error: a.error,
                response: a.response_excerpt,
                at: a.at,
            });
    }
    Ok(Json(DeliveryList {
        data: deliveries
            .into_iter()
            .map(|d| Delivery {
                attempts: by_delivery.remove(&d.id).unwrap_or_default(),
                id: d.id,
                event_id: d.event_id,
                event_type: d.event_type,
                status: d.status,
                attempt_count: d.attempts,
                next_attempt_at: d.next_attempt_at,
                last_status_code: d.last_status_code,
                last_error: d.last_error,
                created_at: d.created_at,
            })
            .collect(),
    }))
}
