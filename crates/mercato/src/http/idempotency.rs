//! The `Idempotency-Key` header (the layer that replays answers by it is
//! `crate::idempotency`: it needs the merchant).

use axum::http::HeaderMap;

use super::ApiError;

pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The request's `Idempotency-Key`, if it sent one; a key that is not 1-255
/// visible ASCII characters is a 422.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    match headers.get(IDEMPOTENCY_KEY) {
        None => Ok(None),
        Some(value) => value
            .to_str()
            .ok()
            .filter(|k| (1..=255).contains(&k.len()))
            .map(Some)
            .ok_or_else(|| {
                ApiError::field("Idempotency-Key", "must be 1-255 visible ASCII characters")
            }),
    }
}
