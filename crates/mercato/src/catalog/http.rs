use axum::extract::Path;
use axum::http::StatusCode;
use axum::Json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use serde::Deserialize;
use utoipa::IntoParams;

use super::model::{CreateProductBody, PatchProductBody, PatchVariantBody, VariantBody};
use super::store::{self, CatalogError, Product};
use super::{
    search, variants, NewProduct, NewVariant, ProductFilter, ProductPatch, VariantDetail,
    VariantPatch,
};
use crate::http::{ApiError, ApiJson, ApiQuery, Problem};
use crate::pagination::{List, Page, PageParams};
use crate::state::AppState;
use crate::tenancy::Tenant;
use crate::validation::FieldError;

/// `DELETE /v1/products/{id}` and `DELETE /v1/products/{id}/variants/{sku}`
/// are inventory's (`inventory::http`): whether they may go depends on
/// reserved units.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_products, post_product))
        .routes(routes!(get_product, patch_product))
        .routes(routes!(post_variant))
        .routes(routes!(get_variant, patch_variant))
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
    let mut tx = tenant.begin_audited("product.create").await?;
    let product = store::create_product(&mut tx, &new).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(product)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ProductListParams {
    /// A prefix of the product's name or of one of its SKUs, any case.
    pub q: Option<String>,
    /// `active` or `archived`.
    pub status: Option<String>,
    /// Only the product that has this SKU.
    pub sku: Option<String>,
    /// Page size, 1 to 500 (default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 500, default = 50)]
    pub limit: Option<String>,
    /// Opaque cursor from a previous page's `next_cursor`.
    pub cursor: Option<String>,
}

/// Lists products, oldest first, optionally filtered.
#[utoipa::path(get, path = "/v1/products", params(ProductListParams),
    security(("api_key" = [])),
    responses(
        (status = 200, body = List<Product>),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_products(
    tenant: Tenant,
    ApiQuery(params): ApiQuery<ProductListParams>,
) -> Result<Json<List<Product>>, ApiError> {
    let page = Page::parse(&PageParams {
        limit: params.limit.clone(),
        cursor: params.cursor.clone(),
    })?;
    let filter = ProductFilter::parse(
        params.q.as_deref(),
        params.status.as_deref(),
        params.sku.as_deref(),
    )?;
    let mut tx = tenant.begin().await?;
    let rows = search::list_products(&mut tx, &filter, page).await?;
    tx.commit().await?;
    Ok(Json(List::from_rows(rows, page, search::product_id)))
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

/// Changes a product's name, description or status (`archived`: no longer sold).
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
    let mut tx = tenant.begin_audited("product.update").await?;
    let product = store::update_product(&mut tx, id, &patch).await?;
    tx.commit().await?;
    product.map(Json).ok_or(ApiError::NotFound("product"))
}

/// Adds a variant to a product.
#[utoipa::path(post, path = "/v1/products/{id}/variants", params(("id" = String, Path)),
    request_body = VariantBody,
    security(("api_key" = [])),
    responses(
        (status = 201, body = VariantDetail),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json", description = "duplicate SKU"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn post_variant(
    tenant: Tenant,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<VariantBody>,
) -> Result<(StatusCode, Json<VariantDetail>), ApiError> {
    let id = product_id(&id)?;
    let new = NewVariant::parse(&body)?;
    let mut tx = tenant.begin_audited("variant.create").await?;
    let added = variants::add_variant(&mut tx, id, &new)
        .await
        .map_err(|e| match e {
            CatalogError::DuplicateSku { sku, .. } => ApiError::Conflict {
                kind: "duplicate-sku",
                title: "Duplicate SKU",
                detail: format!("SKU {sku:?} already exists for this merchant"),
                errors: vec![FieldError::new("sku", "already exists")],
            },
            CatalogError::Db(e) => e.into(),
        })?;
    tx.commit().await?;
    let added = added.ok_or(ApiError::NotFound("product"))?;
    Ok((StatusCode::CREATED, Json(added)))
}

/// A variant with every price it has had.
#[utoipa::path(get, path = "/v1/products/{id}/variants/{sku}",
    params(("id" = String, Path), ("sku" = String, Path)),
    security(("api_key" = [])),
    responses(
        (status = 200, body = VariantDetail),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_variant(
    tenant: Tenant,
    Path((id, sku)): Path<(String, String)>,
) -> Result<Json<VariantDetail>, ApiError> {
    let id = product_id(&id)?;
    let mut tx = tenant.begin().await?;
    let variant = variants::variant_detail(&mut tx, id, &sku).await?;
    tx.commit().await?;
    variant.map(Json).ok_or(ApiError::NotFound("variant"))
}

/// Changes a variant's price. The old price stays in its history: orders keep
/// the price they were sold at, analytics keeps a version of the product per
/// price.
#[utoipa::path(patch, path = "/v1/products/{id}/variants/{sku}",
    params(("id" = String, Path), ("sku" = String, Path)),
    request_body = PatchVariantBody,
    security(("api_key" = [])),
    responses(
        (status = 200, body = VariantDetail),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn patch_variant(
    tenant: Tenant,
    Path((id, sku)): Path<(String, String)>,
    ApiJson(body): ApiJson<PatchVariantBody>,
) -> Result<Json<VariantDetail>, ApiError> {
    let id = product_id(&id)?;
    let patch = VariantPatch::parse(&body)?;
    let mut tx = tenant.begin_audited("variant.update").await?;
    let variant = variants::change_variant(&mut tx, id, &sku, &patch).await?;
    tx.commit().await?;
    variant.map(Json).ok_or(ApiError::NotFound("variant"))
}
