//! The frame of the OpenAPI 3.1 document; its paths come from the routes
//! themselves (each context registers a handler and its docs in one call).

use std::sync::Arc;

use axum::{Extension, Json};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(title = "Mercato", description = "Multi-tenant e-commerce backend"),
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

/// The finished document, handed to `document` as a request extension.
pub type Document = Arc<utoipa::openapi::OpenApi>;

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json")))]
pub async fn document(Extension(doc): Extension<Document>) -> Json<utoipa::openapi::OpenApi> {
    Json(doc.as_ref().clone())
}
