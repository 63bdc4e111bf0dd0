//! Finding products: by a name or SKU prefix (case-insensitive), by status,
//! by an exact SKU, in id order with cursor paging.

use uuid::Uuid;

use super::model::ProductStatus;
use super::store::{with_variants, Product, ProductRow};
use super::Sku;
use crate::db::TenantTx;
use crate::pagination::Page;
use crate::validation::{self, FieldErrors, Invalid};

/// The longest prefix `q` takes (a product name is at most 200 characters).
const MAX_QUERY: usize = 200;

/// What `GET /v1/products` filters by, parsed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ProductFilter {
    /// A lower-case prefix of the name or of a SKU.
    pub prefix: Option<String>,
    pub status: Option<ProductStatus>,
    pub sku: Option<Sku>,
}

impl ProductFilter {
    pub fn parse(
        q: Option<&str>,
        status: Option<&str>,
        sku: Option<&str>,
    ) -> Result<Self, Invalid> {
        let mut errors = FieldErrors::default();
        let prefix = match q {
            None => Some(None),
            Some(raw) => errors
                .check("q", validation::search_prefix(raw, MAX_QUERY))
                .map(Some),
        };
        let status = match status {
            None => Some(None),
            Some(raw) => errors.check("status", ProductStatus::parse(raw)).map(Some),
        };
        let sku = match sku {
            None => Some(None),
            Some(raw) => errors.check("sku", Sku::parse(raw)).map(Some),
        };
        errors.finish(
            prefix
                .zip(status)
                .zip(sku)
                .map(|((prefix, status), sku)| ProductFilter {
                    prefix: prefix.flatten(),
                    status,
                    sku,
                }),
        )
    }
}

/// The first string after every string that starts with `prefix`, byte-wise
/// (the "C" order the search indexes use): `prefix` followed by the largest
/// code point. With `prefix <= term < upper_bound(prefix)` a prefix match is
/// one index range, and text comparisons are leakproof, so the planner uses
/// the index under row-level security (`lower()` or `LIKE` it would not).
pub fn upper_bound(prefix: &str) -> String {
    let mut upper = String::with_capacity(prefix.len() + 4);
    upper.push_str(prefix);
    upper.push(char::MAX);
    upper
}

/// Products matching `filter`, in id order, after the page's cursor.
pub async fn list_products(
    tx: &mut TenantTx,
    filter: &ProductFilter,
    page: Page,
) -> Result<Vec<Product>, sqlx::Error> {
    let merchant = tx.merchant_id().0;
    let status = filter.status.map(ProductStatus::as_str);
    let sku = filter.sku.as_ref().map(Sku::as_str);
    let rows = match &filter.prefix {
        // Two range scans (names, SKUs) find the candidates; the page is cut
        // from them. Another query shape than the unfiltered list, so that
        // neither plan has to serve both.
        Some(prefix) => {
            sqlx::query_as!(
                ProductRow,
                r#"with hits as (
                     select id from products
                     where merchant_id = $1
                       and search_name collate "C" >= $2 and search_name collate "C" < $3
                     union
                     select product_id from variants
                     where merchant_id = $1
                       and search_sku collate "C" >= $2 and search_sku collate "C" < $3
                   )
                   select p.id, p.name, p.description, p.status, p.created_at, p.updated_at
                   from products p join hits h on h.id = p.id
                   where p.merchant_id = $1 and ($4::uuid is null or p.id > $4)
                     and ($5::text is null or p.status = $5)
                     and ($6::text is null or p.id in (
                         select product_id from variants where merchant_id = $1 and sku = $6))
                   order by p.id limit $7"#,
                merchant,
                prefix,
                upper_bound(prefix),
                page.after,
                status,
                sku,
                page.fetch_limit(),
            )
            .fetch_all(tx.conn())
            .await?
        }
        None => {
            sqlx::query_as!(
                ProductRow,
                r#"select p.id, p.name, p.description, p.status, p.created_at, p.updated_at
                   from products p
                   where p.merchant_id = $1 and ($2::uuid is null or p.id > $2)
                     and ($3::text is null or p.status = $3)
                     and ($4::text is null or p.id in (
                         select product_id from variants where merchant_id = $1 and sku = $4))
                   order by p.id limit $5"#,
                merchant,
                page.after,
                status,
                sku,
                page.fetch_limit(),
            )
            .fetch_all(tx.conn())
            .await?
        }
    };
    with_variants(tx, rows).await
}

/// Products are paged by id (`List::from_rows`).
pub fn product_id(p: &Product) -> Uuid {
    p.id
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn q_is_trimmed_lowercased_and_bounded() {
        let parse = |raw: &str| validation::search_prefix(raw, MAX_QUERY);
        assert_eq!(parse("  TeE "), Ok(Some("tee".to_owned())));
        assert_eq!(parse("   "), Ok(None));
        assert!(parse(&"a".repeat(201)).is_err());
        assert!(parse("a\0").is_err());
        let bad = ProductFilter::parse(Some("x"), Some("deleted"), Some("no spaces"))
            .expect_err("two bad fields");
        assert_eq!(bad.fields(), ["status", "sku"]);
    }

    proptest! {
        /// Every string that starts with the prefix sorts, byte-wise, inside
        /// [prefix, upper_bound(prefix)); what does not start with it, outside.
        #[test]
        fn a_prefix_is_one_range(prefix in "\\PC{0,8}", rest in "\\PC{0,8}", other in "\\PC{0,12}") {
            let upper = upper_bound(&prefix);
            let inside = format!("{prefix}{rest}");
            prop_assert!(inside.as_bytes() >= prefix.as_bytes());
            prop_assert!(inside.as_bytes() < upper.as_bytes());
            let in_range = other.as_bytes() >= prefix.as_bytes() && other.as_bytes() < upper.as_bytes();
            prop_assert_eq!(in_range, other.starts_with(&prefix) && !other[prefix.len()..].starts_with(char::MAX));
        }
    }
}
