//! A query-string extractor whose errors are problems naming the parameter.

use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// Like `axum::extract::Query`, but a bad query string is a 422 problem naming
/// the parameter (`?limit=1&limit=2`: `limit` is given twice).
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Query::try_from_uri(&parts.uri)
            .map(|Query(value)| ApiQuery(value))
            .map_err(|rejection| query_error(&rejection.body_text()))
    }
}

fn query_error(text: &str) -> ApiError {
    let reason = text
        .strip_prefix("Failed to deserialize query string: ")
        .unwrap_or(text);
    // The error may lead with the path it is at (`merchant_id: unknown field …`).
    let reason = reason
        .split_once(": ")
        .filter(|(path, _)| !path.contains(' '))
        .map_or(reason, |(_, rest)| rest);
    let named = |prefix: &str| {
        reason
            .strip_prefix(prefix)
            .and_then(|rest| rest.split('`').next())
            .map(str::to_owned)
    };
    if let Some(param) = named("duplicate field `") {
        return ApiError::field(param, "is given more than once");
    }
    if let Some(param) = named("unknown field `") {
        return ApiError::field(param, "is not a parameter of this operation");
    }
    ApiError::field("query", "is not a valid query string")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct Params {
        limit: Option<String>,
    }

    fn extract(uri: &str) -> Result<Params, ApiError> {
        let (mut parts, ()) = axum::http::Request::builder()
            .uri(uri)
            .body(())
            .unwrap()
            .into_parts();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(ApiQuery::<Params>::from_request_parts(&mut parts, &()))
            .map(|ApiQuery(p)| p)
    }

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Strict {
        limit: Option<String>,
    }

    #[test]
    fn an_unknown_parameter_is_named() {
        let (mut parts, ()) = axum::http::Request::builder()
            .uri("/x?limit=1&merchant_id=2")
            .body(())
            .unwrap()
            .into_parts();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        match rt.block_on(ApiQuery::<Strict>::from_request_parts(&mut parts, &())) {
            Err(ApiError::Validation(errors)) => assert_eq!(errors[0].field, "merchant_id"),
            Err(other) => panic!("{other:?}"),
            Ok(_) => panic!("an unknown parameter is refused"),
        }
    }

    #[test]
    fn a_repeated_parameter_is_named() {
        assert!(extract("/x?limit=1").is_ok());
        match extract("/x?limit=1&limit=2") {
            Err(ApiError::Validation(errors)) => assert_eq!(errors[0].field, "limit"),
            other => panic!("{other:?}"),
        }
    }
}
