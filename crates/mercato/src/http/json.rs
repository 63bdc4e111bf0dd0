//! A JSON body extractor whose errors are problems that name the field at fault.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::header;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// Like `axum::Json`, but a syntax error is a 400 `malformed-json` problem and a
/// shape error (wrong type, missing or unknown field, out-of-range number) is a
/// 422 naming the JSON path of the field.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|mime| {
                let mime = mime.trim();
                mime == "application/json" || mime.ends_with("+json")
            });
        if !is_json {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge
            } else {
                ApiError::MalformedJson(e.body_text())
            }
        })?;
        parse(&bytes).map(ApiJson)
    }
}

pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // A body that is not JSON at all is malformed, whatever its first fields say;
    // checked only once something is wrong, so a good body is parsed once.
    let syntax = || serde_json::from_slice::<serde::de::IgnoredAny>(bytes).map_err(malformed);
    // serde would read a JSON array as a struct (its fields in order): refuse it.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        syntax()?;
        return Err(ApiError::field("body", "must be a JSON object"));
    }
    // PostgreSQL text cannot hold NUL: refuse it here, naming the field, for every body.
    if let Some(field) = field_with_nul(bytes) {
        return Err(ApiError::field(
            field,
            "must not contain the NUL character (\\u0000)",
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de)
        .map_err(|err| syntax().err().unwrap_or_else(|| shape_error(err)))?;
    de.end().map_err(malformed)?;
    Ok(value)
}

fn malformed(err: serde_json::Error) -> ApiError {
    let reason = match err.classify() {
        serde_json::error::Category::Eof => "it ends before the JSON value does".to_owned(),
        _ => strip_position(&err.to_string()),
    };
    ApiError::MalformedJson(format!(
        "the body is not valid JSON (line {}, column {}): {reason}",
        err.line(),
        err.column()
    ))
}

/// The JSON path of the first string (or key) holding a NUL, if any.
fn field_with_nul(bytes: &[u8]) -> Option<String> {
    // JSON can carry NUL only as the escape \u0000; skip the walk unless it is there.
    let escaped = bytes.windows(6).any(|w| w.eq_ignore_ascii_case(b"\\u0000"));
    if !escaped {
        return None;
    }
    let value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    fn walk(value: &serde_json::Value, path: &str) -> Option<String> {
        match value {
            serde_json::Value::String(s) if s.contains('\0') => Some(path.to_owned()),
            serde_json::Value::Array(items) => items
                .iter()
                .enumerate()
                .find_map(|(i, v)| walk(v, &format!("{path}[{i}]"))),
            serde_json::Value::Object(fields) => fields.iter().find_map(|(k, v)| {
                let child = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                if k.contains('\0') {
                    Some(child)
                } else {
                    walk(v, &child)
                }
            }),
            _ => None,
        }
    }
    walk(&value, "")
}

fn shape_error(err: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    use serde_json::error::Category;
    let path = err.path().to_string();
    let inner = err.into_inner();
    if !matches!(inner.classify(), Category::Data) {
        return malformed(inner);
    }
    let message = strip_position(&inner.to_string());
    // serde reports a missing field at its parent's path; name the field itself.
    let field = match message
        .strip_prefix("missing field `")
        .and_then(|m| m.split('`').next())
    {
        Some(name) if path == "." => name.to_owned(),
        Some(name) => format!("{path}.{name}"),
        // The body itself has the wrong shape (a string, a number, ...).
        None if path == "." => return ApiError::field("body", "must be a JSON object"),
        None => path,
    };
    ApiError::field(field, in_api_terms(&message))
}

/// serde's message, said in the API's terms rather than Rust's
/// (`invalid type: string "x", expected i64` → `must be an integer`).
fn in_api_terms(message: &str) -> String {
    if message.starts_with("missing field") {
        return "is required".into();
    }
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let expected = rest
            .split_once(", expected ")
            .map(|(_, e)| e.replace("one of ", "").replace('`', ""))
            .unwrap_or_default();
        return match expected.as_str() {
            "" | "nothing" => "is not a field of this object".into(),
            fields => format!("is not a field of this object (it has: {fields})"),
        };
    }
    if let Some(rest) = message.strip_prefix("unknown variant `") {
        let expected = rest
            .split_once(", expected ")
            .map(|(_, e)| e.replace("one of ", "").replace('`', ""))
            .unwrap_or_default();
        return format!("must be one of {expected}");
    }
    if message.starts_with("invalid value: integer") || message.contains("out of range") {
        return "is out of range".into();
    }
    if let Some((_, expected)) = message
        .strip_prefix("invalid type: ")
        .and_then(|m| m.rsplit_once(", expected "))
    {
        return format!("must be {}", kind_in_api_terms(expected));
    }
    message.to_owned()
}

fn kind_in_api_terms(expected: &str) -> &str {
    match expected {
        "i8" | "i16" | "i32" | "i64" | "u8" | "u16" | "u32" | "u64" | "usize" | "isize" => {
            "an integer"
        }
        "f32" | "f64" => "a number",
        "a boolean" => "true or false",
        "a sequence" => "an array",
        "a string" | "a borrowed string" => "a string",
        e if e.starts_with("struct ") || e == "a map" => "a JSON object",
        "unit" => "null",
        _ => "of another type",
    }
}

fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::error::FieldError;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        items: Vec<Item>,
    }
    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Item {
        amount: i64,
    }

    fn fields(err: ApiError) -> Vec<String> {
        match err {
            ApiError::Validation(errors) => {
                errors.into_iter().map(|e: FieldError| e.field).collect()
            }
            other => panic!("expected validation error, got {other:?}"),
        }
    }

    #[test]
    fn shape_errors_name_the_field_path() {
        let overflow = parse::<Body>(br#"{"items":[{"amount":1},{"amount":1e40}]}"#).unwrap_err();
        assert_eq!(fields(overflow), ["items[1].amount"]);
        let missing = parse::<Body>(br#"{"items":[{}]}"#).unwrap_err();
        assert_eq!(fields(missing), ["items[0].amount"]);
        let unknown = parse::<Body>(br#"{"items":[],"extra":1}"#).unwrap_err();
        assert_eq!(fields(unknown), ["extra"]);
        let not_an_object = parse::<Body>(b"[]").unwrap_err();
        assert_eq!(fields(not_an_object), ["body"]);
        let array_for_struct = parse::<Item>(b"[7]").unwrap_err();
        assert_eq!(fields(array_for_struct), ["body"]);
    }

    fn messages(err: ApiError) -> Vec<String> {
        match err {
            ApiError::Validation(errors) => errors.into_iter().map(|e| e.message).collect(),
            other => panic!("expected validation error, got {other:?}"),
        }
    }

    #[test]
    fn messages_speak_the_apis_language() {
        let wrong_type = parse::<Body>(br#"{"items":[{"amount":"ten"}]}"#).unwrap_err();
        assert_eq!(messages(wrong_type), ["must be an integer"]);
        let not_object = parse::<Body>(br#"{"items":[3]}"#).unwrap_err();
        assert_eq!(messages(not_object), ["must be a JSON object"]);
        let missing = parse::<Body>(br#"{}"#).unwrap_err();
        assert_eq!(messages(missing), ["is required"]);
        let unknown = parse::<Body>(br#"{"items":[],"x":1}"#).unwrap_err();
        assert_eq!(
            messages(unknown),
            ["is not a field of this object (it has: items)"]
        );
    }

    #[test]
    fn nul_characters_are_refused_naming_the_field() {
        let nul = parse::<serde_json::Value>(br#"{"a":{"b":["ok","x\u0000y"]}}"#).unwrap_err();
        assert_eq!(fields(nul), ["a.b[1]"]);
        // An escaped backslash followed by "u0000" is text, not NUL.
        assert!(parse::<serde_json::Value>(br#"{"a":"\\u0000"}"#).is_ok());
    }

    #[test]
    fn syntax_errors_are_malformed_json() {
        assert!(matches!(
            parse::<Body>(br#"{"nam"#),
            Err(ApiError::MalformedJson(_))
        ));
        assert!(matches!(
            parse::<Body>(b"{\"items\": ["),
            Err(ApiError::MalformedJson(_))
        ));
        assert!(matches!(
            parse::<Body>(br#"{"items":[]} trailing"#),
            Err(ApiError::MalformedJson(_))
        ));
    }
}
