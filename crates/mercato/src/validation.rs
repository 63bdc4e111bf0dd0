//! Parse at the edge: raw input becomes domain values once, and every bad field
//! is named in one answer. Knows nothing of HTTP: the web layer maps `Invalid`
//! to a 422 problem in one place (`http::error`).

use serde::Serialize;
use utoipa::ToSchema;

/// One invalid input field, named by its JSON path (`variants[0].price.amount`).
#[derive(Clone, Debug, Serialize, ToSchema, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Input that failed to parse: every bad field, with what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the input has {} invalid field(s)", .0.len())]
pub struct Invalid(pub Vec<FieldError>);

impl Invalid {
    /// One bad field.
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        Invalid(vec![FieldError::new(field, message)])
    }

    /// The JSON paths of the bad fields, in the order they were found.
    pub fn fields(&self) -> Vec<&str> {
        self.0.iter().map(|e| e.field.as_str()).collect()
    }
}

/// Collects field errors while input is parsed into domain types, so one answer
/// names every bad field.
#[derive(Default, Debug)]
pub struct FieldErrors(Vec<FieldError>);

impl FieldErrors {
    /// Keeps the value of `parsed`, or records its message against `field`.
    pub fn check<T>(&mut self, field: impl Into<String>, parsed: Result<T, String>) -> Option<T> {
        parsed
            .map_err(|message| self.0.push(FieldError::new(field, message)))
            .ok()
    }

    pub fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError::new(field, message));
    }

    /// `Ok(value)` when no error was recorded and the value was fully built.
    pub fn finish<T>(self, value: Option<T>) -> Result<T, Invalid> {
        match value {
            Some(value) if self.0.is_empty() => Ok(value),
            _ => Err(Invalid(self.0)),
        }
    }
}

/// The longest display name (product, merchant, customer), in characters.
pub const MAX_NAME_CHARS: usize = 200;
/// The longest e-mail address (RFC 5321 path limit), in bytes.
pub const MAX_EMAIL_LEN: usize = 254;

/// A display name: 1 to 200 characters after trimming.
pub fn display_name(raw: &str) -> Result<String, String> {
    let trimmed = raw.trim();
    if trimmed.is_empty() || trimmed.chars().count() > MAX_NAME_CHARS {
        return Err(format!("must be 1-{MAX_NAME_CHARS} characters"));
    }
    Ok(trimmed.to_owned())
}

/// A search prefix as the stored search terms hold it: trimmed, lower case,
/// at most `max_chars`, no NUL. An empty one is no filter (`None`).
pub fn search_prefix(raw: &str, max_chars: usize) -> Result<Option<String>, String> {
    let trimmed = raw.trim();
    if trimmed.chars().count() > max_chars {
        return Err(format!("must be at most {max_chars} characters"));
    }
    if trimmed.contains('\0') {
        return Err("must not contain NUL".to_owned());
    }
    Ok((!trimmed.is_empty()).then(|| trimmed.to_lowercase()))
}

/// An e-mail address: `local@domain.tld`, no spaces, at most 254 bytes; trimmed.
pub fn email(raw: &str) -> Result<String, String> {
    let email = raw.trim();
    let valid = (3..=MAX_EMAIL_LEN).contains(&email.len())
        && !email.chars().any(char::is_whitespace)
        && email
            .split_once('@')
            .is_some_and(|(local, domain)| !local.is_empty() && domain.contains('.'));
    if valid {
        Ok(email.to_owned())
    } else {
        Err("must be an email address".into())
    }
}

/// An RFC 3339 timestamp given as a query parameter.
pub fn timestamp(raw: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::DateTime::parse_from_rfc3339(raw)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|_| "must be an RFC 3339 timestamp, e.g. 2026-12-01T00:00:00Z".to_owned())
}

/// An optional field: `Some(None)` when absent, `Some(Some(value))` when it
/// parses, `None` (its message recorded against `field`) when it does not.
pub fn optional<T>(
    errors: &mut FieldErrors,
    field: &str,
    raw: Option<&str>,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Option<Option<T>> {
    match raw {
        None => Some(None),
        Some(raw) => errors.check(field, parse(raw)).map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_checked() {
        assert!(email("ann@example.com").is_ok());
        assert_eq!(email("  ann@example.com ").unwrap(), "ann@example.com");
        let too_long = format!("{}@example.com", "a".repeat(MAX_EMAIL_LEN));
        for bad in [
            "",
            "ann",
            "@example.com",
            "ann@localhost",
            "a b@example.com",
            &too_long,
        ] {
            assert!(email(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_are_1_to_200_characters_after_trimming() {
        assert_eq!(display_name("  Mug ").unwrap(), "Mug");
        assert!(display_name(&"ü".repeat(MAX_NAME_CHARS)).is_ok());
        for bad in ["", "   ", &"x".repeat(MAX_NAME_CHARS + 1)] {
            assert!(display_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn finish_refuses_a_value_when_any_field_failed() {
        let mut errors = FieldErrors::default();
        let a = errors.check("a", Ok::<_, String>(1));
        let b = errors.check("b", Err::<i32, _>("bad".into()));
        assert_eq!(a, Some(1));
        assert_eq!(
            errors.finish(Some(())).unwrap_err().fields(),
            vec!["b"],
            "b is named"
        );
        assert!(b.is_none());
    }
}
