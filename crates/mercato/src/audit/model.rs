//! What an audit record says, and what the trail may be narrowed by.

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::db::ActorKind;
use crate::validation::{optional, timestamp, FieldErrors, Invalid};

/// One change to one row, made for an actor.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditRecord {
    pub id: Uuid,
    pub at: DateTime<Utc>,
    /// What was asked, as the API names it: `product.update`, `stock.set`, …
    pub action: String,
    pub actor_kind: ActorKind,
    /// A key's fingerprint (`key:…`, never the key), `admin`, a person's id.
    pub actor: String,
    /// The table of the row changed: `products`, `stock`, `orders`, …
    pub target_type: String,
    /// The row's key (`/`-joined when it has several columns).
    pub target_id: String,
    /// `insert`, `update` or `delete`.
    pub operation: String,
    /// insert: the new row; delete: the old one; update: `{column: {from, to}}`
    /// for the columns that changed. Secrets and personal data read `"[redacted]"`.
    #[schema(value_type = Object)]
    pub changes: serde_json::Value,
    /// The client's address, user agent and request id (`X-Request-Id`).
    pub address: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
}

/// The filter parameters as the query string gives them.
#[derive(Debug, Default)]
pub struct RawAuditFilter<'a> {
    pub actor: Option<&'a str>,
    pub action: Option<&'a str>,
    pub target: Option<&'a str>,
    pub from: Option<&'a str>,
    pub to: Option<&'a str>,
}

/// What the trail is narrowed by; all given conditions hold.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct AuditFilter {
    pub actor: Option<String>,
    pub action: Option<String>,
    /// `type` or `type/id`: a table's records, or one row's.
    pub target_type: Option<String>,
    pub target_id: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
}

fn text(raw: &str) -> Result<String, String> {
    let raw = raw.trim();
    if raw.is_empty() || raw.len() > 200 {
        Err("must be 1 to 200 characters".to_owned())
    } else if raw.chars().any(char::is_control) {
        // PostgreSQL text cannot hold NUL; no actor, action or key has any.
        Err("must not contain control characters".to_owned())
    } else {
        Ok(raw.to_owned())
    }
}

impl AuditFilter {
    pub fn parse(raw: &RawAuditFilter<'_>) -> Result<Self, Invalid> {
        let mut errors = FieldErrors::default();
        let actor = optional(&mut errors, "actor", raw.actor, text);
        let action = optional(&mut errors, "action", raw.action, text);
        let target = optional(&mut errors, "target", raw.target, |raw| {
            let raw = text(raw)?;
            Ok(match raw.split_once('/') {
                Some((kind, id)) if !kind.is_empty() && !id.is_empty() => {
                    (kind.to_owned(), Some(id.to_owned()))
                }
                Some(_) => return Err("must be a type, or type/id".to_owned()),
                None => (raw, None),
            })
        });
        let from = optional(&mut errors, "from", raw.from, timestamp);
        let to = optional(&mut errors, "to", raw.to, timestamp);
        if let (Some(Some(from)), Some(Some(to))) = (from, to) {
            if to <= from {
                errors.push("to", "must be later than from");
            }
        }
        let parsed = actor.zip(action).zip(target).zip(from).zip(to).map(
            |((((actor, action), target), from), to)| {
                let (target_type, target_id) = target.map_or((None, None), |(t, id)| (Some(t), id));
                AuditFilter {
                    actor,
                    action,
                    target_type,
                    target_id,
                    from,
                    to,
                }
            },
        );
        errors.finish(parsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_is_a_type_or_one_row_of_it() {
        let parsed = AuditFilter::parse(&RawAuditFilter {
            target: Some("variant_prices/0193-ab/2026-01-01"),
            ..Default::default()
        })
        .expect("valid");
        assert_eq!(parsed.target_type.as_deref(), Some("variant_prices"));
        assert_eq!(parsed.target_id.as_deref(), Some("0193-ab/2026-01-01"));
        let kind = AuditFilter::parse(&RawAuditFilter {
            target: Some("products"),
            ..Default::default()
        })
        .expect("valid");
        assert_eq!(
            (kind.target_type.as_deref(), kind.target_id),
            (Some("products"), None)
        );
    }

    #[test]
    fn bad_values_name_their_parameter() {
        let err = AuditFilter::parse(&RawAuditFilter {
            target: Some("/x"),
            from: Some("yesterday"),
            to: Some("2026-01-01T00:00:00Z"),
            actor: Some(" "),
            action: Some("order\0cancel"),
        })
        .expect_err("invalid");
        assert_eq!(err.fields(), ["actor", "action", "target", "from"]);
    }
}
