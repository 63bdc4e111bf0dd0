//! The frame of the OpenAPI 3.1 document; its paths come from the routes
//! themselves (each context registers a handler and its docs in one call).

use std::sync::Arc;

use axum::{Extension, Json};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

// One relative server: paths resolve against wherever the document was fetched
// from, so the same document is right behind any host, port or proxy.
#[derive(OpenApi)]
#[openapi(
    info(title = "Mercato", description = "Multi-tenant e-commerce backend"),
    servers((url = "/", description = "This instance (where this document was fetched from)")),
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
        components.add_security_scheme(
            "api_key",
            bearer("Merchant API key (`mk_…`), or a staff session's token (`mss_…`)"),
        );
        components.add_security_scheme(
            "publishable_key",
            SecurityScheme::ApiKey(utoipa::openapi::security::ApiKey::Header(
                utoipa::openapi::security::ApiKeyValue::with_description(
                    "X-Publishable-Key",
                    "A shop's publishable key (`pk_…`), or none on the shop's host name",
                ),
            )),
        );
        components.add_security_scheme(
            "session",
            bearer("A person's session token (`mss_…`); browsers send the `mercato_session` cookie and `X-CSRF-Token` instead"),
        );
        components.add_security_scheme(
            "admin_token",
            bearer("Platform admin token (MERCATO_ADMIN_TOKEN)"),
        );
    }
}

/// The finished document, handed to `document` as a request extension.
pub type Document = Arc<utoipa::openapi::OpenApi>;

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", security(),
    responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json")))]
pub async fn document(Extension(doc): Extension<Document>) -> Json<utoipa::openapi::OpenApi> {
    Json(doc.as_ref().clone())
}

/// Adds what the plumbing does to every operation it applies to, so the
/// document says it once for all: `Idempotency-Key` on POSTs, and the problems
/// any operation may answer (400 bad JSON or query, 401 / 403 credentials,
/// 413 / 415 bodies, 414 long URIs, 422 bad fields or query parameters, 429
/// rate limits, 503 unavailable).
pub fn document_common_answers(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::path::{Operation, ParameterBuilder, ParameterIn};
    use utoipa::openapi::{ContentBuilder, ObjectBuilder, Ref, Required, ResponseBuilder, Type};

    let problem = |description: &str| {
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/problem+json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("Problem")))
                    .build(),
            )
            .build()
    };
    let idempotency_key = ParameterBuilder::new()
        .name("Idempotency-Key")
        .parameter_in(ParameterIn::Header)
        .required(Required::False)
        .description(Some(
            "Retry-safe key (1-255 characters): the same key and body answer the first \
             response again with `Idempotent-Replayed: true`; another body is a 422; \
             while the first is running, a 409 with `Retry-After`. Kept 24 hours.",
        ))
        .schema(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(255)),
        ))
        .build();
    for (path, item) in doc.paths.paths.iter_mut() {
        let is_api = path.starts_with("/v1/") || path.starts_with("/store/v1/");
        let operations = [
            (&mut item.get, false),
            (&mut item.put, false),
            (&mut item.post, true),
            (&mut item.patch, false),
            (&mut item.delete, false),
        ];
        for (operation, is_post) in operations {
            let Some(op) = operation.as_mut() else {
                continue;
            };
            let Operation {
                responses,
                parameters,
                request_body,
                security,
                ..
            } = op;
            let security = serde_json::to_string(security).unwrap_or_default();
            let takes_query = parameters
                .iter()
                .flatten()
                .any(|p| matches!(p.parameter_in, ParameterIn::Query));
            let mut add = |status: &str, description: &str| {
                responses
                    .responses
                    .entry(status.to_owned())
                    .or_insert_with(|| problem(description).into());
            };
            add("414", "The request target is too long");
            if !is_api {
                continue;
            }
            add("400", "Malformed JSON body or query string");
            add("401", "Missing or invalid credentials");
            if security.contains("admin_token") {
                add("403", "A merchant key where the admin token is needed");
            }
            if request_body.is_some() {
                add("413", "The body is larger than 2 MB");
                add("415", "The body is not JSON");
                add("422", "Invalid fields, named in `errors`");
            }
            if takes_query {
                add(
                    "422",
                    "Invalid or unknown query parameters, named in `errors`",
                );
            }
            add("429", "Rate limited; see Retry-After");
            add("503", "The database or a dependency is unavailable; retry");
            if is_post {
                add("409", "A request with this Idempotency-Key is in flight");
                add(
                    "422",
                    "Invalid fields, named in `errors` (or a bad Idempotency-Key)",
                );
                parameters
                    .get_or_insert_with(Vec::new)
                    .push(idempotency_key.clone());
            }
        }
    }
}

/// Points each page schema (`List_Product`, …) at its item's component rather
/// than a copy of it: utoipa 5 inlines a generic's argument (juhaku/utoipa#1586),
/// which left item components unused and gave generated clients a second,
/// anonymous model of every listed item. Only an identical copy is replaced.
pub fn refer_to_page_items(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::schema::{ArrayItems, Schema};
    use utoipa::openapi::{Ref, RefOr};

    let Some(components) = doc.components.as_mut() else {
        return;
    };
    let same = |a: &RefOr<Schema>, b: &RefOr<Schema>| {
        serde_json::to_value(a)
            .ok()
            .is_some_and(|a| serde_json::to_value(b).ok() == Some(a))
    };
    let pages: Vec<(String, String)> = components
        .schemas
        .keys()
        .filter_map(|name| Some((name.clone(), name.strip_prefix("List_")?.to_owned())))
        .collect();
    for (page, item) in pages {
        let Some(item_schema) = components.schemas.get(&item).cloned() else {
            continue;
        };
        let Some(RefOr::T(Schema::Object(object))) = components.schemas.get_mut(&page) else {
            continue;
        };
        let Some(RefOr::T(Schema::Array(data))) = object.properties.get_mut("data") else {
            continue;
        };
        if let ArrayItems::RefOrSchema(items) = &mut data.items {
            if same(items, &item_schema) {
                **items = RefOr::Ref(Ref::from_schema_name(item));
            }
        }
    }
}

/// Keeps every operation's `summary` to its first sentence, on one line: utoipa
/// takes a handler's whole first doc paragraph, which tools show as a title
/// (and generated clients as a docstring's first line). The rest of the
/// paragraph goes first in the description.
pub fn shorten_summaries(doc: &mut utoipa::openapi::OpenApi) {
    for item in doc.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.patch,
            &mut item.delete,
        ];
        for op in operations.into_iter().flatten() {
            let Some(summary) = op.summary.take() else {
                continue;
            };
            let line = summary.split_whitespace().collect::<Vec<_>>().join(" ");
            let (first, rest) = match line.split_once(". ") {
                Some((first, rest)) => (format!("{first}."), rest.to_owned()),
                None => (line, String::new()),
            };
            op.summary = Some(first);
            if !rest.is_empty() {
                op.description = Some(match op.description.take() {
                    Some(more) if !more.is_empty() => format!("{rest}\n\n{more}"),
                    _ => rest,
                });
            }
        }
    }
}
