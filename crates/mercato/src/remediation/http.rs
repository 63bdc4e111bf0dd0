//! Remediation's routes: the support queue (merchant key) and the customers'
//! signed links (no key: the HMAC-signed token is the credential).

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{Choice, Escalation, LinkError, LinkOutcome, TokenError};
use crate::cells::MerchantDb;
use crate::http::{ApiError, ApiJson, ApiQuery, Problem};
use crate::pagination::{List, Page, PageParams};
use crate::state::AppState;
use crate::tenancy::Tenant;
use crate::validation::FieldErrors;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_escalations))
        .routes(routes!(choice_page, post_choice))
        .routes(routes!(payment_method_page, post_payment_method))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EscalationParams {
    /// Page size, 1 to 500 (default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 500, default = 50)]
    pub limit: Option<String>,
    /// Opaque cursor from a previous page's `next_cursor`.
    pub cursor: Option<String>,
}

/// Remediation cases handed to people: underpaid customers who gave no new
/// payment method after every reminder, and refunds the provider refused.
#[utoipa::path(get, path = "/v1/support/escalations", params(EscalationParams),
    security(("api_key" = [])), tag = "remediation",
    responses((status = 200, body = List<Escalation>)))]
pub async fn list_escalations(
    tenant: Tenant,
    ApiQuery(params): ApiQuery<EscalationParams>,
) -> Result<Json<List<Escalation>>, ApiError> {
    let page = Page::parse(&PageParams {
        limit: params.limit,
        cursor: params.cursor,
    })?;
    let mut tx = tenant.begin().await?;
    let rows = super::escalations(&mut tx, page.after, page.fetch_limit()).await?;
    tx.commit().await?;
    Ok(Json(List::from_rows(rows, page, |e| e.adjustment_id)))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LinkParams {
    /// The token of the customer's link.
    pub token: Option<String>,
    /// The choice the link offers (`refund`, `credit`, `none`).
    #[param(value_type = Option<Choice>)]
    pub choice: Option<String>,
}

/// A JSON string literal that is safe inside an HTML `<script>`.
fn js_string(s: &str) -> String {
    serde_json::to_string(s)
        .unwrap_or_else(|_| "\"\"".into())
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

/// The page a link in an e-mail opens: it confirms with one button, which
/// posts the token (the POST checks it and applies the answer once). The
/// token is in its address, so the page keeps it there: no referrer leaves
/// it, no other site may frame the page, and only its own script (by nonce)
/// runs and talks to this origin.
fn link_page(title: &str, form: &str, script: &str) -> Response {
    let mut nonce = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut nonce);
    let nonce = hex::encode(nonce);
    let page = Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title></head>\
         <body><h1>{title}</h1>{form}<p id=\"result\"></p><script nonce=\"{nonce}\">{script}</script></body></html>"
    ));
    let policy = format!(
        "default-src 'none'; script-src 'nonce-{nonce}'; connect-src 'self'; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    );
    let mut response = page.into_response();
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, policy.as_str()),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(name, value);
        }
    }
    response
}

/// The page of an overpaid customer's link: confirms the choice it names.
#[utoipa::path(get, path = "/v1/adjustments/{id}/choice", params(("id" = String, Path), LinkParams),
    security(), tag = "remediation", responses(
        (status = 200, description = "A page that confirms the choice", content_type = "text/html", body = String),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn choice_page(
    Path(id): Path<String>,
    ApiQuery(params): ApiQuery<LinkParams>,
) -> Result<Response, ApiError> {
    let choice = params
        .choice
        .as_deref()
        .and_then(|c| Choice::parse(c).ok())
        .unwrap_or(Choice::None);
    let label = match choice {
        Choice::Refund => "Refund the difference to my payment method",
        Choice::Credit => "Give me the difference as store credit",
        Choice::None => "Keep things as they are",
    };
    let script = format!(
        "document.getElementById('go').onclick=async()=>{{const r=await fetch('/v1/adjustments/'+{id}+'/choice',{{method:'POST',headers:{{'content-type':'application/json'}},body:JSON.stringify({{token:{token},choice:{choice}}})}});const b=await r.json();document.getElementById('result').textContent=r.ok?'Done: '+b.state:(b.detail||b.title);}};",
        id = js_string(&id),
        token = js_string(params.token.as_deref().unwrap_or_default()),
        choice = js_string(choice.as_str()),
    );
    Ok(link_page(
        "Your order's price",
        &format!("<p><button id=\"go\">{label}</button></p>"),
        &script,
    ))
}

/// The page of an underpaid customer's link: takes a payment method.
#[utoipa::path(get, path = "/v1/adjustments/{id}/payment-method", params(("id" = String, Path),
        ("token" = Option<String>, Query, description = "The token of the customer's link.")),
    security(), tag = "remediation", responses(
        (status = 200, description = "A page that takes a payment method", content_type = "text/html", body = String),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn payment_method_page(
    Path(id): Path<String>,
    ApiQuery(params): ApiQuery<LinkParams>,
) -> Result<Response, ApiError> {
    let script = format!(
        "document.getElementById('go').onclick=async()=>{{const pm=document.getElementById('pm').value;const r=await fetch('/v1/adjustments/'+{id}+'/payment-method',{{method:'POST',headers:{{'content-type':'application/json'}},body:JSON.stringify({{token:{token},payment_method:pm}})}});const b=await r.json();document.getElementById('result').textContent=r.ok?'Done: '+b.state:(b.detail||b.title);}};",
        id = js_string(&id),
        token = js_string(params.token.as_deref().unwrap_or_default()),
    );
    Ok(link_page(
        "Pay the difference",
        "<p><label>Payment method <input id=\"pm\" value=\"pm_card_ok\"></label> <button id=\"go\">Pay once</button></p>",
        &script,
    ))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChoiceBody {
    /// The token of the customer's link.
    pub token: String,
    /// `refund`, `credit` or `none`.
    pub choice: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PaymentMethodBody {
    /// The token of the customer's link.
    pub token: String,
    /// The tokenized payment method to charge the difference to once.
    pub payment_method: String,
}

/// The database of the merchant a link's token names, wherever the directory
/// says it lives now (a link mailed before a move still works after it).
async fn link_db(state: &AppState, token: &str) -> Result<MerchantDb, ApiError> {
    let merchant = super::link_merchant(token).map_err(link_error)?;
    state
        .cells
        .merchant_db(merchant)
        .await
        .map_err(crate::tenancy::unroutable)
}

fn link_error(err: LinkError) -> ApiError {
    match err {
        LinkError::Token(TokenError::Invalid) => ApiError::Forbidden("the link is not valid"),
        LinkError::Token(TokenError::Expired) => ApiError::Gone("the link has expired"),
        LinkError::NotWaiting(state) => ApiError::Conflict {
            kind: "adjustment-not-waiting",
            title: "Not waiting for this",
            detail: format!("this adjustment is {state}, not waiting for this answer"),
            errors: Vec::new(),
        },
        LinkError::ChoiceTaken(made) => ApiError::Conflict {
            kind: "choice-already-made",
            title: "Choice already made",
            detail: format!("the choice {made} was made already and is applied once"),
            errors: Vec::new(),
        },
        LinkError::InProgress => ApiError::Conflict {
            kind: "payment-in-progress",
            title: "Payment in progress",
            detail: "a payment with another method is under way for this adjustment".into(),
            errors: Vec::new(),
        },
        LinkError::Refused(reason) => ApiError::PaymentRefused(reason),
        LinkError::Remediation(super::RemediationError::Db(e)) | LinkError::Db(e) => {
            ApiError::Internal(e)
        }
        LinkError::Remediation(other) => {
            ApiError::Internal(sqlx::Error::Protocol(other.to_string()))
        }
    }
}

/// An overpaid customer's choice from the link in their e-mail: a refund to
/// the original method, store credit, or nothing. Applied once: the same
/// choice again answers as the first did; another choice is a 409.
#[utoipa::path(post, path = "/v1/adjustments/{id}/choice", params(("id" = String, Path)),
    request_body = ChoiceBody, security(), tag = "remediation",
    responses(
        (status = 200, body = LinkOutcome),
        (status = 403, description = "The token is not this link's", body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "The link has expired", body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn post_choice(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ChoiceBody>,
) -> Result<Json<LinkOutcome>, ApiError> {
    let mut errors = FieldErrors::default();
    let choice = errors.check("choice", Choice::parse(&body.choice));
    let choice = errors.finish(choice)?;
    let id =
        uuid::Uuid::try_parse(&id).map_err(|_| ApiError::Forbidden("the link is not valid"))?;
    let db = link_db(&state, &body.token).await?;
    let outcome = super::choose(
        &db,
        state.serving(&db).checkout.payments.as_ref(),
        &body.token,
        id,
        choice,
    )
    .await
    .map_err(link_error)?;
    Ok(Json(outcome))
}

/// An underpaid customer's new payment method, from the link in their
/// e-mail: the difference is charged to it once.
#[utoipa::path(post, path = "/v1/adjustments/{id}/payment-method", params(("id" = String, Path)),
    request_body = PaymentMethodBody, security(), tag = "remediation",
    responses(
        (status = 200, body = LinkOutcome),
        (status = 402, description = "The method could not be charged", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token is not this link's", body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "The link has expired", body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn post_payment_method(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<PaymentMethodBody>,
) -> Result<Json<LinkOutcome>, ApiError> {
    let mut errors = FieldErrors::default();
    let method = errors.check(
        "payment_method",
        crate::payments::SandboxMethod::parse(&body.payment_method).map(|_| ()),
    );
    errors.finish(method)?;
    let id =
        uuid::Uuid::try_parse(&id).map_err(|_| ApiError::Forbidden("the link is not valid"))?;
    let db = link_db(&state, &body.token).await?;
    let outcome = super::give_payment_method(
        &db,
        state.serving(&db).checkout.payments.as_ref(),
        &body.token,
        id,
        &body.payment_method,
    )
    .await
    .map_err(link_error)?;
    Ok(Json(outcome))
}
