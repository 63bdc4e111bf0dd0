use axum::extract::Path;
use axum::http::StatusCode;
use axum::Json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::model::{CreateProductBody, PatchProductBody};
use super::store::{self, CatalogError, Product};
use super::{NewProduct, ProductPatch};
use crate::http::{ApiError, ApiJson, ApiQuery, Problem};
use crate::pagination::{List, Page, PageParams};
use crate::state::AppState;
use crate::tenancy::Tenant;
use crate::validation::FieldError;

/// `DELETE /v1/products/{id}` is inventory's (`inventory::http`): whether a
/// product may go depends on its reserved units.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_products, post_product))
        .routes(routes!(get_product, patch_product))
}

/// An id that does not parse names no object of this merchant: 404, like any other.
fn product_id(raw: &str) -> Result<Uuid, ApiError> {
    ApiError::path_id(raw, "product")
}

impl From<CatalogError> for ApiError {
    fn from(err: CatalogError) -> Self {
        match err {
            CatalogError::DuplicateSku { index, sku } => ApiError::Conflict {
                kind: "duplicate-sku",
                title: "Duplicate SKU",
                detail: format!("SKU {sku:?} already exists for this merchant"),
                errors: vec![FieldError::new(
                    format!("variants[{index}].sku"),
                    "already exists",
                )],
            },
            CatalogError::Db(e) => e.into(),
        }
    }
}

/// Creates a product with its variants.
#[utoipa::path(post, path = "/v1/products", request_body = CreateProductBody,
    security(("api_key" = [])),
    responses(
        (status = 201, body = Product),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json", description = "duplicate SKU"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn post_product(
    tenant: Tenant,
    ApiJson(body): ApiJson<CreateProductBody>,
) -> Result<(StatusCode, Json<Product>), ApiError> {
    let new = NewProduct::parse(&body)?;
    let mut tx = tenant.begin().await?;
    let product = store::create_product(&mut tx, &new).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(product)))
}

/// Lists products, oldest first.
#[utoipa::path(get, path = "/v1/products", params(PageParams),
    security(("api_key" = [])),
    responses(
        (status = 200, body = List<Product>),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_products(
    tenant: Tenant,
    ApiQuery(params): ApiQuery<PageParams>,
) -> Result<Json<List<Product>>, ApiError> {
    let page = Page::parse(&params)?;
    let mut tx = tenant.begin().await?;
    let rows = store::list_products(&mut tx, page).await?;
    tx.commit().await?;
    Ok(Json(List::from_rows(rows, page, |p| p.id)))
}

/// A product with its variants.
#[utoipa::path(get, path = "/v1/products/{id}", params(("id" = String, Path)),
    security(("api_key" = [])),
    responses(
        (status = 200, body = Product),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_product(
    tenant: Tenant,
    Path(id): Path<String>,
) -> Result<Json<Product>, ApiError> {
    let id = product_id(&id)?;
    let mut tx = tenant.begin().await?;
    let product = store::get_product(&mut tx, id).await?;
    tx.commit().await?;
    product.map(Json).ok_or(ApiError::NotFound("product"))
}

/// Changes a product's name or description.
#[utoipa::path(patch, path = "/v1/products/{id}", params(("id" = String, Path)),
    request_body = PatchProductBody,
    security(("api_key" = [])),
    responses(
        (status = 200, body = Product),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn patch_product(
    tenant: Tenant,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<PatchProductBody>,
) -> Result<Json<Product>, ApiError> {
    let id = product_id(&id)?;
    let patch = ProductPatch::parse(&body)?;
    let mut tx = tenant.begin().await?;
    let product = store::update_product(&mut tx, id, &patch).await?;
    tx.commit().await?;
    product.map(Json).ok_or(ApiError::NotFound("product"))
}
