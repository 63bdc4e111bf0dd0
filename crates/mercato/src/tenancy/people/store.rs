//! People's SQL: persons and sessions (platform tables of the main
//! database), staff and invitations (tenant tables beside the API keys).

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use utoipa::ToSchema;
use uuid::Uuid;

use super::model::{Email, Role};
use crate::db::{MerchantId, TenantTx};

fn role(raw: &str) -> Result<Role, sqlx::Error> {
    raw.parse().map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

/// A person as a login sees them.
#[derive(Debug, Clone)]
pub struct Person {
    pub id: Uuid,
    pub email: String,
    pub password_hash: String,
    pub operator: bool,
    pub totp_secret: Option<Vec<u8>>,
}

pub async fn person_by_email(pool: &PgPool, email: &Email) -> Result<Option<Person>, sqlx::Error> {
    sqlx::query_as!(
        Person,
        "select id, email, password_hash, operator, totp_secret from people where email = $1",
        email.as_str(),
    )
    .fetch_optional(pool)
    .await
}

pub async fn person_by_id(
    conn: &mut PgConnection,
    id: Uuid,
) -> Result<Option<Person>, sqlx::Error> {
    sqlx::query_as!(
        Person,
        "select id, email, password_hash, operator, totp_secret from people where id = $1",
        id,
    )
    .fetch_optional(conn)
    .await
}

/// Makes a person; `None` when the address has one already.
pub async fn insert_person(
    conn: &mut PgConnection,
    email: &Email,
    password_hash: &str,
    operator: bool,
) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar!(
        "insert into people (id, email, password_hash, operator) values ($1, $2, $3, $4)
         on conflict (email) do nothing returning id",
        Uuid::now_v7(),
        email.as_str(),
        password_hash,
        operator,
    )
    .fetch_optional(conn)
    .await
}

/// A new password: every session of the person ends with the old one.
pub async fn set_password(pool: &PgPool, person: Uuid, hash: &str) -> Result<u64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query!(
        "update people set password_hash = $2, password_changed_at = now() where id = $1",
        person,
        hash,
    )
    .execute(&mut *tx)
    .await?;
    let ended = revoke_sessions_of(&mut tx, person).await?;
    tx.commit().await?;
    Ok(ended)
}

/// Turns the second factor on (`Some`) or off.
pub async fn set_totp_secret(
    pool: &PgPool,
    person: Uuid,
    secret: Option<&[u8]>,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "update people set totp_secret = $2 where id = $1",
        person,
        secret
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Makes (or keeps) `email` a platform operator; `None` when the address
/// has a person already and `password_hash` was given for a new one.
pub async fn make_operator(
    pool: &PgPool,
    email: &Email,
    password_hash: &str,
) -> Result<(Uuid, bool), sqlx::Error> {
    let mut tx = pool.begin().await?;
    if let Some(id) = insert_person(&mut tx, email, password_hash, true).await? {
        tx.commit().await?;
        return Ok((id, true));
    }
    let id = sqlx::query_scalar!(
        "update people set operator = true where email = $1 returning id",
        email.as_str()
    )
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((id, false))
}

/// The merchants a person works for, with their role at each (oldest first).
pub async fn memberships(
    pool: &PgPool,
    person: Uuid,
) -> Result<Vec<(MerchantId, Role)>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"select merchant_id as "merchant_id!", role as "role!" from mercato_memberships($1)"#,
        person
    )
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|r| Ok((MerchantId(r.merchant_id), role(&r.role)?)))
        .collect()
}

/// A session being opened.
pub struct NewSession<'a> {
    pub person: Uuid,
    pub merchant: Option<MerchantId>,
    pub token_hash: &'a [u8],
    pub expires_at: DateTime<Utc>,
    pub address: Option<&'a str>,
    pub user_agent: Option<&'a str>,
}

pub async fn insert_session(pool: &PgPool, s: &NewSession<'_>) -> Result<Uuid, sqlx::Error> {
    let id = Uuid::now_v7();
    sqlx::query!(
        "insert into sessions (id, token_hash, person_id, merchant_id, expires_at, address, user_agent)
         values ($1, $2, $3, $4, $5, $6, $7)",
        id,
        s.token_hash,
        s.person,
        s.merchant.map(|m| m.0),
        s.expires_at,
        s.address,
        s.user_agent,
    )
    .execute(pool)
    .await?;
    Ok(id)
}

/// A live session and its person.
#[derive(Debug, Clone)]
pub struct LiveSession {
    pub id: Uuid,
    pub person: Uuid,
    pub email: String,
    pub operator: bool,
    pub merchant: Option<MerchantId>,
    pub expires_at: DateTime<Utc>,
}

/// The session of a token hash, unless revoked or expired.
pub async fn live_session(
    pool: &PgPool,
    token_hash: &[u8],
) -> Result<Option<LiveSession>, sqlx::Error> {
    let row = sqlx::query!(
        "select s.id, s.person_id, p.email, p.operator, s.merchant_id, s.expires_at
         from sessions s join people p on p.id = s.person_id
         where s.token_hash = $1 and s.revoked_at is null and s.expires_at > now()",
        token_hash,
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|r| LiveSession {
        id: r.id,
        person: r.person_id,
        email: r.email,
        operator: r.operator,
        merchant: r.merchant_id.map(MerchantId),
        expires_at: r.expires_at,
    }))
}

pub async fn revoke_session(pool: &PgPool, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "update sessions set revoked_at = now() where id = $1 and revoked_at is null",
        id
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Ends every live session of a person; how many.
pub async fn revoke_sessions_of(conn: &mut PgConnection, person: Uuid) -> Result<u64, sqlx::Error> {
    let done = sqlx::query!(
        "update sessions set revoked_at = now() where person_id = $1 and revoked_at is null",
        person
    )
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// A person's role at the transaction's merchant; `None`: not its staff.
pub async fn role_of(tx: &mut TenantTx, person: Uuid) -> Result<Option<Role>, sqlx::Error> {
    let found = sqlx::query_scalar!(
        "select role from staff where merchant_id = $1 and person_id = $2",
        tx.merchant_id().0,
        person
    )
    .fetch_optional(tx.conn())
    .await?;
    found.as_deref().map(role).transpose()
}

/// One of a merchant's people.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StaffMember {
    /// The person's id.
    pub id: Uuid,
    pub email: String,
    #[schema(value_type = String, example = "staff")]
    pub role: Role,
    pub created_at: DateTime<Utc>,
}

pub async fn list_staff(tx: &mut TenantTx) -> Result<Vec<StaffMember>, sqlx::Error> {
    let rows = sqlx::query!(
        "select s.person_id, p.email, s.role, s.created_at
         from staff s join people p on p.id = s.person_id
         where s.merchant_id = $1 order by s.created_at, s.person_id",
        tx.merchant_id().0
    )
    .fetch_all(tx.conn())
    .await?;
    rows.into_iter()
        .map(|r| {
            Ok(StaffMember {
                id: r.person_id,
                email: r.email,
                role: role(&r.role)?,
                created_at: r.created_at,
            })
        })
        .collect()
}

/// One member, locked for a change.
pub async fn staff_member_for_update(
    tx: &mut TenantTx,
    person: Uuid,
) -> Result<Option<StaffMember>, sqlx::Error> {
    let row = sqlx::query!(
        "select s.person_id, p.email, s.role, s.created_at
         from staff s join people p on p.id = s.person_id
         where s.merchant_id = $1 and s.person_id = $2 for update of s",
        tx.merchant_id().0,
        person
    )
    .fetch_optional(tx.conn())
    .await?;
    row.map(|r| {
        Ok(StaffMember {
            id: r.person_id,
            email: r.email,
            role: role(&r.role)?,
            created_at: r.created_at,
        })
    })
    .transpose()
}

/// The merchant's owners, locked: two owners demoting each other at once
/// take turns here, and the second sees the first's change.
pub async fn owners_for_update(tx: &mut TenantTx) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar!(
        "select person_id from staff where merchant_id = $1 and role = 'owner' order by person_id for update",
        tx.merchant_id().0
    )
    .fetch_all(tx.conn())
    .await
}

/// Adds a person to the staff; `false` when they are on it already.
pub async fn insert_staff(
    tx: &mut TenantTx,
    person: Uuid,
    role: Role,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query!(
        "insert into staff (merchant_id, person_id, role) values ($1, $2, $3) on conflict do nothing",
        tx.merchant_id().0,
        person,
        role.as_str()
    )
    .execute(tx.conn())
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn set_role(tx: &mut TenantTx, person: Uuid, role: Role) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "update staff set role = $3 where merchant_id = $1 and person_id = $2",
        tx.merchant_id().0,
        person,
        role.as_str()
    )
    .execute(tx.conn())
    .await?;
    Ok(())
}

pub async fn delete_staff(tx: &mut TenantTx, person: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "delete from staff where merchant_id = $1 and person_id = $2",
        tx.merchant_id().0,
        person
    )
    .execute(tx.conn())
    .await?;
    Ok(())
}

/// An invitation not yet accepted.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Invitation {
    pub id: Uuid,
    pub email: String,
    #[schema(value_type = String, example = "staff")]
    pub role: Role,
    pub expires_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
}

/// Records an invitation; earlier open ones to the same address end (the
/// newest link is the one that works).
pub async fn insert_invitation(
    tx: &mut TenantTx,
    email: &Email,
    role: Role,
    token_hash: &[u8],
    expires_at: DateTime<Utc>,
) -> Result<Invitation, sqlx::Error> {
    sqlx::query!(
        "update staff_invitations set revoked_at = now()
         where merchant_id = $1 and email = $2 and accepted_at is null and revoked_at is null",
        tx.merchant_id().0,
        email.as_str()
    )
    .execute(tx.conn())
    .await?;
    let id = Uuid::now_v7();
    let created_at = sqlx::query_scalar!(
        "insert into staff_invitations (merchant_id, id, email, role, token_hash, expires_at)
         values ($1, $2, $3, $4, $5, $6) returning created_at",
        tx.merchant_id().0,
        id,
        email.as_str(),
        role.as_str(),
        token_hash,
        expires_at
    )
    .fetch_one(tx.conn())
    .await?;
    Ok(Invitation {
        id,
        email: email.as_str().to_owned(),
        role,
        expires_at,
        created_at,
    })
}

/// Open invitations (neither accepted, revoked nor expired), oldest first.
pub async fn open_invitations(tx: &mut TenantTx) -> Result<Vec<Invitation>, sqlx::Error> {
    let rows = sqlx::query!(
        "select id, email, role, expires_at, created_at from staff_invitations
         where merchant_id = $1 and accepted_at is null and revoked_at is null and expires_at > now()
         order by id",
        tx.merchant_id().0
    )
    .fetch_all(tx.conn())
    .await?;
    rows.into_iter()
        .map(|r| {
            Ok(Invitation {
                id: r.id,
                email: r.email,
                role: role(&r.role)?,
                expires_at: r.expires_at,
                created_at: r.created_at,
            })
        })
        .collect()
}

/// An invitation as its link finds it (locked: it is used once).
pub struct InvitationState {
    pub id: Uuid,
    pub email: String,
    pub role: Role,
    pub expired: bool,
    pub used: bool,
}

pub async fn invitation_for_update(
    tx: &mut TenantTx,
    token_hash: &[u8],
) -> Result<Option<InvitationState>, sqlx::Error> {
    let row = sqlx::query!(
        r#"select id, email, role, expires_at <= now() as "expired!",
                  (accepted_at is not null or revoked_at is not null) as "used!"
           from staff_invitations where merchant_id = $1 and token_hash = $2 for update"#,
        tx.merchant_id().0,
        token_hash
    )
    .fetch_optional(tx.conn())
    .await?;
    row.map(|r| {
        Ok(InvitationState {
            id: r.id,
            email: r.email,
            role: role(&r.role)?,
            expired: r.expired,
            used: r.used,
        })
    })
    .transpose()
}

pub async fn mark_invitation_accepted(tx: &mut TenantTx, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "update staff_invitations set accepted_at = now() where merchant_id = $1 and id = $2",
        tx.merchant_id().0,
        id
    )
    .execute(tx.conn())
    .await?;
    Ok(())
}
