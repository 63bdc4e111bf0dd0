//! Remediation's routes: the support queue (merchant key) and the customers'
//! signed links (no key: the HMAC-signed token is the credential).

use axum::extract::{Path, State};
use axum::Json;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{Choice, Escalation, LinkError, LinkOutcome, TokenError};
use crate::http::auth::Tenant;
use crate::http::{ApiError, ApiJson, ApiQuery, Problem};
use crate::pagination::{List, Page, PageParams};
use crate::state::AppState;
use crate::validation::FieldErrors;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_escalations))
        .routes(routes!(post_choice))
        .routes(routes!(post_payment_method))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct EscalationParams {
    pub limit: Option<String>,
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
        LinkError::Refused(reason) => ApiError::PaymentFailed {
            order_id: uuid::Uuid::nil(),
            reason,
        },
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
    request_body = ChoiceBody, tag = "remediation",
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
    let outcome = super::choose(
        &state.db.app,
        state.checkout.payments.as_ref(),
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
    request_body = PaymentMethodBody, tag = "remediation",
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
    let outcome = super::give_payment_method(
        &state.db.app,
        state.checkout.payments.as_ref(),
        &body.token,
        id,
        &body.payment_method,
    )
    .await
    .map_err(link_error)?;
    Ok(Json(outcome))
}
