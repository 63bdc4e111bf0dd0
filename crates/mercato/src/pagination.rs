//! Keyset pagination: `?limit=&cursor=` list parameters and the
//! `{data, next_cursor}` envelope. Lists are ordered by id (UUIDv7, so by time).

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::validation::{FieldErrors, Invalid};

pub const DEFAULT_LIMIT: i64 = 50;
pub const MAX_LIMIT: i64 = 500;

/// Raw query parameters; parsed by `Page::parse` so bad values name their field.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Page size, 1 to 500 (default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 500, default = 50)]
    pub limit: Option<String>,
    /// Opaque cursor from a previous page's `next_cursor`.
    pub cursor: Option<String>,
}

/// A validated page request: lists are keyset-paginated by id (UUIDv7, time-ordered).
#[derive(Debug, Clone, Copy)]
pub struct Page {
    pub limit: i64,
    pub after: Option<Uuid>,
}

impl Page {
    pub fn parse(params: &PageParams) -> Result<Self, Invalid> {
        let mut errors = FieldErrors::default();
        let limit = match params.limit.as_deref() {
            None => Some(DEFAULT_LIMIT),
            Some(raw) => errors.check(
                "limit",
                raw.parse::<i64>()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| format!("must be an integer from 1 to {MAX_LIMIT}")),
            ),
        };
        let after = match params.cursor.as_deref() {
            None | Some("") => Some(None),
            Some(raw) => errors
                .check(
                    "cursor",
                    decode_cursor(raw).ok_or_else(|| "is not a cursor this API issued".to_owned()),
                )
                .map(Some),
        };
        errors.finish(limit.zip(after).map(|(limit, after)| Page { limit, after }))
    }

    /// Rows to fetch: one more than the page, to learn whether another page follows.
    pub fn fetch_limit(&self) -> i64 {
        self.limit + 1
    }
}

/// A page of results.
#[derive(Debug, Serialize, ToSchema)]
pub struct List<T> {
    pub data: Vec<T>,
    pub next_cursor: Option<String>,
}

impl<T> List<T> {
    /// Builds the page from up to `page.fetch_limit()` rows ordered by id.
    pub fn from_rows(mut rows: Vec<T>, page: Page, id_of: impl Fn(&T) -> Uuid) -> Self {
        let more = rows.len() as i64 > page.limit;
        rows.truncate(page.limit as usize);
        let next_cursor = if more {
            rows.last().map(|r| encode_cursor(id_of(r)))
        } else {
            None
        };
        List {
            data: rows,
            next_cursor,
        }
    }
}

fn encode_cursor(id: Uuid) -> String {
    format!("c1_{}", id.simple())
}

fn decode_cursor(raw: &str) -> Option<Uuid> {
    Uuid::try_parse(raw.strip_prefix("c1_")?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(limit: Option<&str>, cursor: Option<&str>) -> PageParams {
        PageParams {
            limit: limit.map(str::to_owned),
            cursor: cursor.map(str::to_owned),
        }
    }

    #[test]
    fn limits_outside_1_to_500_and_foreign_cursors_are_rejected() {
        assert_eq!(Page::parse(&params(None, None)).unwrap().limit, 50);
        assert_eq!(Page::parse(&params(Some("500"), None)).unwrap().limit, 500);
        for bad in ["0", "501", "-1", "ten"] {
            assert!(Page::parse(&params(Some(bad), None)).is_err(), "{bad}");
        }
        assert!(Page::parse(&params(None, Some("garbage"))).is_err());
        let id = Uuid::now_v7();
        assert_eq!(
            Page::parse(&params(None, Some(&encode_cursor(id))))
                .unwrap()
                .after,
            Some(id)
        );
    }
}
