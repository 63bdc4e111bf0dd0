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

/// Marks an answer that shows a secret once (a webhook signing secret): the
/// idempotency layer stores it with these top-level fields set to `null`, so
/// a replay never hands the secret out again, nor a rotated one back. (A
/// client that lost the first answer rotates the secret, as a lost merchant
/// key is repaired by issuing a new one.)
#[derive(Clone, Copy, Debug)]
pub struct ShownOnce(pub &'static [&'static str]);

impl ShownOnce {
    /// The JSON body with the secret fields nulled; `None` if it is not a
    /// JSON object (then nothing of it may be stored).
    pub fn redact(&self, body: &[u8]) -> Option<Vec<u8>> {
        let mut value: serde_json::Value = serde_json::from_slice(body).ok()?;
        let object = value.as_object_mut()?;
        for field in self.0 {
            if let Some(v) = object.get_mut(*field) {
                *v = serde_json::Value::Null;
            }
        }
        serde_json::to_vec(&value).ok()
    }
}
