//! Customers' SQL. Every function takes a `TenantTx`: RLS scopes it to one merchant.

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::model::{email_key, Address, CustomerPatch, CustomerQuery, NewCustomer};
use crate::catalog::upper_bound;
use crate::db::TenantTx;
use crate::pagination::Page;

#[derive(Debug, thiserror::Error)]
pub enum CustomerError {
    #[error("a customer with this e-mail address exists")]
    DuplicateEmail { existing: Uuid },
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Customer {
    pub id: Uuid,
    pub email: String,
    pub name: Option<String>,
    pub addresses: Vec<Address>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// When their personal data was erased (`null`: never).
    pub erased_at: Option<DateTime<Utc>>,
}

struct Row {
    id: Uuid,
    email: String,
    name: Option<String>,
    addresses: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    erased_at: Option<DateTime<Utc>>,
}

impl TryFrom<Row> for Customer {
    type Error = sqlx::Error;

    fn try_from(r: Row) -> Result<Self, Self::Error> {
        let addresses = serde_json::from_str(&r.addresses)
            .map_err(|e| sqlx::Error::Decode(format!("customers.addresses: {e}").into()))?;
        Ok(Customer {
            id: r.id,
            email: r.email,
            name: r.name,
            addresses,
            created_at: r.created_at,
            updated_at: r.updated_at,
            erased_at: r.erased_at,
        })
    }
}

fn addresses_json(addresses: &[Address]) -> Result<String, sqlx::Error> {
    serde_json::to_string(addresses).map_err(|e| sqlx::Error::Encode(Box::new(e)))
}

/// Creates a customer; `DuplicateEmail` when the address (any case) has one.
pub async fn create(tx: &mut TenantTx, new: &NewCustomer) -> Result<Customer, CustomerError> {
    let merchant = tx.merchant_id().0;
    let key = email_key(&new.email);
    let inserted = sqlx::query_as!(
        Row,
        r#"insert into customers (merchant_id, id, email, email_key, name, search_name, addresses)
           values ($1, $2, $3, $4, $5, lower($5), $6::text::jsonb)
           on conflict (merchant_id, email_key) do nothing
           returning id, email, name, addresses::text as "addresses!", created_at, updated_at, erased_at"#,
        merchant,
        Uuid::now_v7(),
        new.email,
        key,
        new.name,
        addresses_json(&new.addresses)?,
    )
    .fetch_optional(tx.conn())
    .await?;
    match inserted {
        Some(row) => Ok(row.try_into()?),
        None => {
            let existing = by_email_key(tx, &key).await?.unwrap_or_default();
            Err(CustomerError::DuplicateEmail { existing })
        }
    }
}

async fn by_email_key(tx: &mut TenantTx, key: &str) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar!(
        "select id from customers where merchant_id = $1 and email_key = $2",
        tx.merchant_id().0,
        key,
    )
    .fetch_optional(tx.conn())
    .await
}

/// The customer an order by `email` belongs to, made on the first order that
/// names the address. Two first orders at once make one customer: the second
/// insert waits for the first and then finds its row.
pub async fn link(tx: &mut TenantTx, email: &str) -> Result<Uuid, sqlx::Error> {
    let key = email_key(email);
    if let Some(id) = by_email_key(tx, &key).await? {
        return Ok(id);
    }
    let new = NewCustomer::from_checkout(email);
    match create(tx, &new).await {
        Ok(customer) => Ok(customer.id),
        // Made meanwhile by a concurrent order (this statement's snapshot may
        // predate it; a new statement sees it).
        Err(CustomerError::DuplicateEmail { .. }) => by_email_key(tx, &key)
            .await?
            .ok_or(sqlx::Error::RowNotFound),
        Err(CustomerError::Db(e)) => Err(e),
    }
}

pub async fn find(tx: &mut TenantTx, id: Uuid) -> Result<Option<Customer>, sqlx::Error> {
    sqlx::query_as!(
        Row,
        r#"select id, email, name, addresses::text as "addresses!", created_at, updated_at, erased_at
         from customers where merchant_id = $1 and id = $2"#,
        tx.merchant_id().0,
        id,
    )
    .fetch_optional(tx.conn())
    .await?
    .map(Customer::try_from)
    .transpose()
}

pub async fn update(
    tx: &mut TenantTx,
    id: Uuid,
    patch: &CustomerPatch,
) -> Result<Option<Customer>, sqlx::Error> {
    let addresses = patch.addresses.as_deref().map(addresses_json).transpose()?;
    sqlx::query_as!(
        Row,
        r#"update customers set
             name = coalesce($3, name),
             search_name = lower(coalesce($3, name)),
             addresses = coalesce($4::text::jsonb, addresses),
             updated_at = now()
         where merchant_id = $1 and id = $2 and erased_at is null
         returning id, email, name, addresses::text as "addresses!", created_at, updated_at, erased_at"#,
        tx.merchant_id().0,
        id,
        patch.name,
        addresses,
    )
    .fetch_optional(tx.conn())
    .await?
    .map(Customer::try_from)
    .transpose()
}

/// Customers in id order (creation order) after the page's cursor, those whose
/// e-mail address or name starts with the query's prefix when it has one.
pub async fn list(
    tx: &mut TenantTx,
    query: &CustomerQuery,
    page: Page,
) -> Result<Vec<Customer>, sqlx::Error> {
    let merchant = tx.merchant_id().0;
    let rows = match &query.prefix {
        // Two range scans (addresses, names), leakproof comparisons: the
        // indexes serve them under row-level security.
        Some(prefix) => {
            sqlx::query_as!(
                Row,
                r#"with hits as (
                     select id from customers
                     where merchant_id = $1 and email_key >= $2 and email_key < $3
                     union
                     select id from customers
                     where merchant_id = $1 and search_name >= $2 and search_name < $3
                   )
                   select c.id, c.email, c.name, c.addresses::text as "addresses!", c.created_at, c.updated_at, c.erased_at
                   from customers c join hits h on h.id = c.id
                   where c.merchant_id = $1 and ($4::uuid is null or c.id > $4)
                   order by c.id limit $5"#,
                merchant,
                prefix,
                upper_bound(prefix),
                page.after,
                page.fetch_limit(),
            )
            .fetch_all(tx.conn())
            .await?
        }
        None => {
            sqlx::query_as!(
                Row,
                r#"select id, email, name, addresses::text as "addresses!", created_at, updated_at, erased_at
                 from customers where merchant_id = $1 and ($2::uuid is null or id > $2)
                 order by id limit $3"#,
                merchant,
                page.after,
                page.fetch_limit(),
            )
            .fetch_all(tx.conn())
            .await?
        }
    };
    rows.into_iter().map(Customer::try_from).collect()
}

/// Replaces the customer's personal data (address, name, addresses) and
/// marks them erased; their address before, or `None` when there is no such
/// customer. Erased already: the same placeholder again, nothing changes.
pub async fn erase(
    tx: &mut TenantTx,
    id: Uuid,
    placeholder: &str,
) -> Result<Option<(Customer, String)>, sqlx::Error> {
    let merchant = tx.merchant_id().0;
    let before = sqlx::query_scalar!(
        "select email from customers where merchant_id = $1 and id = $2 for update",
        merchant,
        id,
    )
    .fetch_optional(tx.conn())
    .await?;
    let Some(before) = before else {
        return Ok(None);
    };
    let erased = sqlx::query_as!(
        Row,
        r#"update customers set
               email = $3, email_key = $3, name = null, search_name = null, addresses = '[]',
               erased_at = coalesce(erased_at, now()), updated_at = now()
           where merchant_id = $1 and id = $2
           returning id, email, name, addresses::text as "addresses!", created_at, updated_at, erased_at"#,
        merchant,
        id,
        placeholder,
    )
    .fetch_one(tx.conn())
    .await?;
    Ok(Some((erased.try_into()?, before)))
}
