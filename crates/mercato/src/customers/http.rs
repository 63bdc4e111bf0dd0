use axum::extract::Path;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::model::{CreateCustomerBody, CreditBody, PatchCustomerBody};
use super::store::{self, Customer, CustomerError};
use super::{CustomerPatch, CustomerQuery, NewCredit, NewCustomer};
use crate::catalog::Money;
use crate::http::idempotency::idempotency_key;
use crate::http::{ApiError, ApiJson, ApiQuery, Problem};
use crate::pagination::{List, Page, PageParams};
use crate::state::AppState;
use crate::tenancy::Tenant;
use crate::validation::FieldError;
use crate::wallet::{self, Grant, WalletEntry};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_customers, post_customer))
        .routes(routes!(get_customer, patch_customer))
        .routes(routes!(get_wallet))
        .routes(routes!(post_credit))
}

fn customer_id(raw: &str) -> Result<Uuid, ApiError> {
    ApiError::path_id(raw, "customer")
}

impl From<CustomerError> for ApiError {
    fn from(err: CustomerError) -> Self {
        match err {
            CustomerError::DuplicateEmail { existing } => ApiError::Conflict {
                kind: "duplicate-customer",
                title: "Customer exists",
                detail: format!("customer {existing} has this e-mail address"),
                errors: vec![FieldError::new("email", "already belongs to a customer")],
            },
            CustomerError::Db(e) => e.into(),
        }
    }
}

/// Creates a customer. The e-mail address is unique per merchant, any case.
#[utoipa::path(post, path = "/v1/customers", request_body = CreateCustomerBody,
    security(("api_key" = [])),
    responses(
        (status = 201, body = Customer),
        (status = 409, body = Problem, content_type = "application/problem+json", description = "e-mail address taken"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn post_customer(
    tenant: Tenant,
    ApiJson(body): ApiJson<CreateCustomerBody>,
) -> Result<(StatusCode, Json<Customer>), ApiError> {
    let new = NewCustomer::parse(&body)?;
    let mut tx = tenant.begin_audited("customer.create").await?;
    let customer = store::create(&mut tx, &new).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(customer)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct CustomerListParams {
    /// A prefix of the e-mail address or of the name, any case.
    pub q: Option<String>,
    /// Page size, 1 to 500 (default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 500, default = 50)]
    pub limit: Option<String>,
    /// Opaque cursor from a previous page's `next_cursor`.
    pub cursor: Option<String>,
}

/// Lists customers, oldest first; `q` finds them by e-mail or name prefix.
#[utoipa::path(get, path = "/v1/customers", params(CustomerListParams),
    security(("api_key" = [])),
    responses(
        (status = 200, body = List<Customer>),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_customers(
    tenant: Tenant,
    ApiQuery(params): ApiQuery<CustomerListParams>,
) -> Result<Json<List<Customer>>, ApiError> {
    let page = Page::parse(&PageParams {
        limit: params.limit.clone(),
        cursor: params.cursor.clone(),
    })?;
    let query = CustomerQuery::parse(params.q.as_deref())?;
    let mut tx = tenant.begin().await?;
    let rows = store::list(&mut tx, &query, page).await?;
    tx.commit().await?;
    Ok(Json(List::from_rows(rows, page, |c| c.id)))
}

/// A customer.
#[utoipa::path(get, path = "/v1/customers/{id}", params(("id" = String, Path)),
    security(("api_key" = [])),
    responses(
        (status = 200, body = Customer),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_customer(
    tenant: Tenant,
    Path(id): Path<String>,
) -> Result<Json<Customer>, ApiError> {
    let id = customer_id(&id)?;
    let mut tx = tenant.begin().await?;
    let customer = store::find(&mut tx, id).await?;
    tx.commit().await?;
    customer.map(Json).ok_or(ApiError::NotFound("customer"))
}

/// Changes a customer's name or addresses (the whole list).
#[utoipa::path(patch, path = "/v1/customers/{id}", params(("id" = String, Path)),
    request_body = PatchCustomerBody,
    security(("api_key" = [])),
    responses(
        (status = 200, body = Customer),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn patch_customer(
    tenant: Tenant,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<PatchCustomerBody>,
) -> Result<Json<Customer>, ApiError> {
    let id = customer_id(&id)?;
    let patch = CustomerPatch::parse(&body)?;
    let mut tx = tenant.begin_audited("customer.update").await?;
    let customer = store::update(&mut tx, id, &patch).await?;
    tx.commit().await?;
    customer.map(Json).ok_or(ApiError::NotFound("customer"))
}

/// A customer's store credit and its latest movements.
#[derive(Debug, Serialize, ToSchema)]
pub struct Wallet {
    pub customer_id: Uuid,
    /// `null` until the first credit (which sets the wallet's currency).
    pub balance: Option<Money>,
    /// The latest 50 entries, newest first.
    pub entries: Vec<WalletEntry>,
}

const LEDGER_SHOWN: i64 = 50;

async fn wallet_of(
    tx: &mut crate::db::TenantTx,
    customer: &Customer,
) -> Result<Wallet, sqlx::Error> {
    let balance = wallet::balance(tx, &customer.email)
        .await?
        .map(|(amount, currency)| Money { amount, currency });
    let entries = wallet::ledger(tx, &customer.email, LEDGER_SHOWN).await?;
    Ok(Wallet {
        customer_id: customer.id,
        balance,
        entries,
    })
}

/// A customer's store credit: the balance and the ledger.
#[utoipa::path(get, path = "/v1/customers/{id}/wallet", params(("id" = String, Path)),
    security(("api_key" = [])),
    responses(
        (status = 200, body = Wallet),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_wallet(tenant: Tenant, Path(id): Path<String>) -> Result<Json<Wallet>, ApiError> {
    let id = customer_id(&id)?;
    let mut tx = tenant.begin().await?;
    let customer = store::find(&mut tx, id)
        .await?
        .ok_or(ApiError::NotFound("customer"))?;
    let wallet = wallet_of(&mut tx, &customer).await?;
    tx.commit().await?;
    Ok(Json(wallet))
}

/// Gives a customer store credit, with the reason in the wallet's ledger.
/// Send an `Idempotency-Key`: a retry under it credits once.
#[utoipa::path(post, path = "/v1/customers/{id}/wallet/credits", params(("id" = String, Path)),
    request_body = CreditBody,
    security(("api_key" = [])),
    responses(
        (status = 201, body = Wallet),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json", description = "the wallet holds another currency"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn post_credit(
    tenant: Tenant,
    headers: HeaderMap,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<CreditBody>,
) -> Result<(StatusCode, Json<Wallet>), ApiError> {
    let id = customer_id(&id)?;
    let credit = NewCredit::parse(&body)?;
    // Under the request's key a retry finds its entry; without one each
    // request is a credit of its own.
    let key = match idempotency_key(&headers)? {
        Some(key) => format!("credit:{key}"),
        None => format!("credit:{}", Uuid::now_v7()),
    };
    let mut tx = tenant.begin_audited("customer.credit").await?;
    let customer = store::find(&mut tx, id)
        .await?
        .ok_or(ApiError::NotFound("customer"))?;
    let granted = wallet::grant(
        &mut tx,
        &customer.email,
        credit.amount.amount,
        &credit.amount.currency,
        &key,
        &credit.reason,
    )
    .await?;
    if let Grant::OtherCurrency(held) = granted {
        return Err(ApiError::Conflict {
            kind: "wallet-currency",
            title: "Wallet holds another currency",
            detail: format!("this customer's store credit is in {held}"),
            errors: vec![FieldError::new(
                "amount.currency",
                format!("must be {held}"),
            )],
        });
    }
    let wallet = wallet_of(&mut tx, &customer).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(wallet)))
}
