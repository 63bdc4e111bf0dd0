//! The OpenAPI 3.1 document, generated from the handlers' annotations.

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(title = "Mercato", description = "Multi-tenant e-commerce backend"),
    paths(
        super::healthz,
        super::readyz,
        super::metrics::render,
        document,
        crate::tenancy::http::post_merchant,
        crate::tenancy::http::patch_merchant,
        crate::catalog::http::post_product,
        crate::catalog::http::list_products,
        crate::catalog::http::get_product,
        crate::catalog::http::patch_product,
        crate::catalog::http::delete_product,
        crate::inventory::http::get_inventory,
        crate::inventory::http::put_inventory,
        crate::inventory::http::post_reservation,
        crate::inventory::http::get_reservation,
        crate::inventory::http::release_reservation,
        crate::checkout::http::post_checkout,
        crate::checkout::http::list_orders,
        crate::checkout::http::get_order,
        crate::legacy_orders::http::post_legacy_order,
        crate::legacy_orders::http::get_legacy_order,
    ),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let bearer = |description: &str| {
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(description))
                    .build(),
            )
        };
        components.add_security_scheme("api_key", bearer("Merchant API key (`mk_…`)"));
        components.add_security_scheme(
            "admin_token",
            bearer("Platform admin token (MERCATO_ADMIN_TOKEN)"),
        );
    }
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json")))]
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
