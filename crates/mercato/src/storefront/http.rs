//! The storefront's routes: the merchant's publishable keys
//! (`/v1/publishable-keys`) and the store API (`/store/v1`), with the layer
//! that resolves a store request's shop and answers CORS.

use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::model::{parse_origin, PublishableKey};
use super::pages::{Page, MAX_AGE_SECONDS};
use super::store::{self, PublishableKeyView};
use super::Shop;
use crate::catalog::{list_products, Money, ProductFilter, ProductStatus};
use crate::http::{ApiError, ApiJson, ApiQuery, Problem};
use crate::pagination::{List, Page as ListPage, PageParams};
use crate::state::AppState;
use crate::tenancy::Tenant;
use crate::validation::FieldErrors;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(post_publishable_key, list_publishable_keys))
        .routes(routes!(delete_publishable_key))
        .routes(routes!(store_products))
        .routes(routes!(store_product))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPublishableKey {
    /// The origins whose pages may call the store API with the key
    /// (`https://shop.example.com`), or `["*"]` for any (never with credentials).
    pub allowed_origins: Vec<String>,
}

/// Makes a publishable key for the shop's web pages: it reads the active
/// catalog (and, later, runs carts) from the origins it lists, nothing else.
#[utoipa::path(post, path = "/v1/publishable-keys", request_body = NewPublishableKey,
    security(("api_key" = [])),
    responses(
        (status = 201, body = PublishableKeyView),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn post_publishable_key(
    tenant: Tenant,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<NewPublishableKey>,
) -> Result<(StatusCode, Json<PublishableKeyView>), ApiError> {
    let mut errors = FieldErrors::default();
    if body.allowed_origins.is_empty() || body.allowed_origins.len() > 20 {
        errors.push("allowed_origins", "give 1 to 20 origins");
    }
    let mut origins = Vec::new();
    for (i, raw) in body.allowed_origins.iter().enumerate() {
        if let Some(origin) = errors.check(format!("allowed_origins[{i}]"), parse_origin(raw)) {
            if !origins.contains(&origin) {
                origins.push(origin);
            }
        }
    }
    let origins = errors.finish(Some(origins))?;
    let key = PublishableKey::generate(tenant.merchant_id);
    let mut tx = crate::db::TenantTx::begin_in_directory(&state.db.app, tenant.merchant_id).await?;
    tx.act_for(&tenant.acting("publishable_key.create")).await?;
    let view = store::insert_key(&mut tx, &key, &origins).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(view)))
}

#[derive(Serialize, ToSchema)]
pub struct PublishableKeyList {
    pub data: Vec<PublishableKeyView>,
}

/// The shop's publishable keys, live and revoked, oldest first.
#[utoipa::path(get, path = "/v1/publishable-keys", security(("api_key" = [])),
    responses(
        (status = 200, body = PublishableKeyList),
        (status = 403, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_publishable_keys(
    tenant: Tenant,
    State(state): State<AppState>,
) -> Result<Json<PublishableKeyList>, ApiError> {
    let mut tx = crate::db::TenantTx::begin_in_directory(&state.db.app, tenant.merchant_id).await?;
    let data = store::list_keys(&mut tx).await?;
    tx.commit().await?;
    Ok(Json(PublishableKeyList { data }))
}

/// Revokes a publishable key: refused at once here, within 30 s elsewhere.
#[utoipa::path(delete, path = "/v1/publishable-keys/{id}", params(("id" = String, Path)),
    security(("api_key" = [])),
    responses(
        (status = 204, description = "revoked (or already revoked)"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn delete_publishable_key(
    tenant: Tenant,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = ApiError::path_id(&id, "publishable key")?;
    let mut tx = crate::db::TenantTx::begin_in_directory(&state.db.app, tenant.merchant_id).await?;
    tx.act_for(&tenant.acting("publishable_key.revoke")).await?;
    let key = store::revoke_key(&mut tx, id)
        .await?
        .ok_or(ApiError::NotFound("publishable key"))?;
    tx.commit().await?;
    state.storefront.directory.forget_key(&key);
    Ok(StatusCode::NO_CONTENT)
}

/// A product as a shopper sees it.
#[derive(Serialize, ToSchema)]
pub struct StoreProduct {
    pub id: uuid::Uuid,
    pub name: String,
    pub description: Option<String>,
    /// The variants for sale.
    pub variants: Vec<StoreVariant>,
}

#[derive(Serialize, ToSchema)]
pub struct StoreVariant {
    pub sku: String,
    /// The list price.
    pub price: Money,
    /// Units that can be ordered now: on hand less those reserved by
    /// checkouts in progress (as `GET /v1/inventory/{sku}` says), at most
    /// 2 s old.
    pub available: i64,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StoreProductParams {
    /// A prefix of the name or of a SKU, in any case.
    pub q: Option<String>,
    /// Page size, 1 to 500 (default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 500, default = 50)]
    pub limit: Option<String>,
    /// Opaque cursor from a previous page's `next_cursor`.
    pub cursor: Option<String>,
}

/// A cached page as the answer: 304 when the browser has it already.
fn page_answer(page: &Page, headers: &HeaderMap) -> Response {
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| {
            tags.split(',')
                .any(|t| t.trim() == page.etag || t.trim() == "*")
        });
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            page.body.clone(),
        )
            .into_response()
    };
    let h = response.headers_mut();
    if let Ok(etag) = HeaderValue::from_str(&page.etag) {
        h.insert(header::ETAG, etag);
    }
    if let Ok(cache) = HeaderValue::from_str(&format!("public, max-age={MAX_AGE_SECONDS}")) {
        h.insert(header::CACHE_CONTROL, cache);
    }
    response
}

/// The page of `url` from the cache, else built by `build` and kept.
async fn cached_page<T: Serialize>(
    state: &AppState,
    shop: &Shop,
    url: &str,
    build: impl std::future::Future<Output = Result<T, ApiError>>,
) -> Result<Page, ApiError> {
    if let Some(page) = state.storefront.pages.get(shop.merchant_id, url) {
        return Ok(page);
    }
    let body = serde_json::to_vec(&build.await?)
        .map_err(|e| ApiError::Internal(sqlx::Error::Encode(Box::new(e))))?;
    let page = Page::new(body);
    state
        .storefront
        .pages
        .put(shop.merchant_id, url, page.clone());
    Ok(page)
}

/// Shoppers' view of products: active ones, with their variants for sale.
async fn store_view(
    tx: &mut crate::db::TenantTx,
    products: Vec<crate::catalog::Product>,
) -> Result<Vec<StoreProduct>, sqlx::Error> {
    let skus: Vec<String> = products
        .iter()
        .flat_map(|p| p.variants.iter())
        .filter(|v| v.status == ProductStatus::Active)
        .map(|v| v.sku.clone())
        .collect();
    let available: std::collections::HashMap<String, i64> =
        crate::inventory::available_units(tx, &skus)
            .await?
            .into_iter()
            .collect();
    Ok(products
        .into_iter()
        .filter(|p| p.status == ProductStatus::Active)
        .map(|p| StoreProduct {
            id: p.id,
            name: p.name,
            description: p.description,
            variants: p
                .variants
                .into_iter()
                .filter(|v| v.status == ProductStatus::Active)
                .map(|v| StoreVariant {
                    available: available.get(&v.sku).copied().unwrap_or(0).max(0),
                    sku: v.sku,
                    price: v.price,
                })
                .collect(),
        })
        .collect())
}

/// The shop's active products, oldest first (`ETag`, `Cache-Control`).
#[utoipa::path(get, path = "/store/v1/products", params(StoreProductParams),
    security(("publishable_key" = [])),
    responses(
        (status = 200, body = List<StoreProduct>),
        (status = 304, description = "Not modified (If-None-Match)"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn store_products(
    shop: Shop,
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    ApiQuery(params): ApiQuery<StoreProductParams>,
) -> Result<Response, ApiError> {
    let page = ListPage::parse(&PageParams {
        limit: params.limit.clone(),
        cursor: params.cursor.clone(),
    })?;
    let filter = ProductFilter::parse(params.q.as_deref(), Some("active"), None)?;
    let url = uri.to_string();
    let answer = cached_page(&state, &shop, &url, async {
        let mut tx = shop.db.begin().await?;
        // Active products only (the filter), so the view keeps every row
        // and the page's cursor is the last product's.
        let products = list_products(&mut tx, &filter, page).await?;
        let view = store_view(&mut tx, products).await?;
        tx.commit().await?;
        let list = List::from_rows(view, page, |p| p.id);
        Ok::<_, ApiError>(list)
    })
    .await?;
    Ok(page_answer(&answer, &headers))
}

/// One active product of the shop (`ETag`, `Cache-Control`).
#[utoipa::path(get, path = "/store/v1/products/{id}", params(("id" = String, Path)),
    security(("publishable_key" = [])),
    responses(
        (status = 200, body = StoreProduct),
        (status = 304, description = "Not modified (If-None-Match)"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn store_product(
    shop: Shop,
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = ApiError::path_id(&id, "product")?;
    let url = uri.to_string();
    let answer = cached_page(&state, &shop, &url, async {
        let mut tx = shop.db.begin().await?;
        let product = crate::catalog::get_product(&mut tx, id)
            .await?
            .filter(|p| p.status == ProductStatus::Active)
            .ok_or(ApiError::NotFound("product"))?;
        let mut view = store_view(&mut tx, vec![product]).await?;
        tx.commit().await?;
        view.pop().ok_or(ApiError::NotFound("product"))
    })
    .await?;
    Ok(page_answer(&answer, &headers))
}

/// Methods and headers a shop's page may use on the store API.
const ALLOW_METHODS: &str = "GET, POST, PATCH, DELETE";
const ALLOW_HEADERS: &str = "content-type, x-publishable-key, authorization, idempotency-key";

/// Every `/store/` request: a CORS preflight is answered here (for an
/// origin a live publishable key allows); any other request gets its shop
/// resolved once (the handlers take it from the extensions) and, when its
/// origin may read the answer, the CORS headers.
pub async fn store_layer(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    if !req.uri().path().starts_with("/store/") {
        return next.run(req).await;
    }
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .map(str::to_owned);
    if req.method() == Method::OPTIONS {
        return preflight(&state, origin.as_deref()).await;
    }
    // Unresolved, the request goes on: its handler's `Shop` refuses it (a
    // method or route that does not exist is answered as such first).
    let grant = match super::shop::resolve(&state, req.headers()).await {
        Ok(shop) => {
            let grant = shop.cors.clone();
            req.extensions_mut().insert(shop);
            grant
        }
        Err(_) => None,
    };
    let mut response = next.run(req).await;
    let h = response.headers_mut();
    h.insert(
        header::VARY,
        HeaderValue::from_static("Origin, X-Publishable-Key, Authorization, Host"),
    );
    if let Some(grant) = grant {
        if let Ok(origin) = HeaderValue::from_str(&grant.allow_origin) {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        }
        if grant.credentials {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
    }
    response
}

async fn preflight(state: &AppState, origin: Option<&str>) -> Response {
    let Some(origin) = origin else {
        return ApiError::MethodNotAllowed.into_response();
    };
    let published = match super::model::parse_origin(origin) {
        Ok(origin) => store::origin_published(&state.db.app, &origin).await,
        Err(_) => Ok(None),
    };
    let listed = match published {
        Ok(Some(how)) => how == "listed",
        Ok(None) => {
            return ApiError::Forbidden("no publishable key allows this origin").into_response()
        }
        Err(err) => return ApiError::from(err).into_response(),
    };
    let mut response = StatusCode::NO_CONTENT.into_response();
    let h = response.headers_mut();
    let allow = if listed {
        origin.to_lowercase()
    } else {
        "*".to_owned()
    };
    if let Ok(allow) = HeaderValue::from_str(&allow) {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
    }
    if listed {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static(ALLOW_METHODS),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(ALLOW_HEADERS),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    h.insert(header::VARY, HeaderValue::from_static("Origin"));
    response
}
