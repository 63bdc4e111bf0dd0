//! People who log in: a merchant's staff (with a role) and the platform's
//! operators, their passwords, second factors, invitations and sessions.
//! Authentication of a session is here (`tenancy::auth` asks it); the
//! routes that manage people are the `team` context's.
//!
//! Owns tables `people`, `sessions`, `staff` and `staff_invitations`.

pub mod model;
pub mod secrets;
pub mod store;

use std::net::IpAddr;

use chrono::{DateTime, Duration, Utc};
use sqlx::PgPool;
use uuid::Uuid;

pub use model::{check_password, Email, InvitationToken, Role, SessionToken};
pub use store::{Invitation, LiveSession, Person, StaffMember};

use super::auth_failures::Throttle;
use crate::db::MerchantId;
use crate::quotas::Rate;

/// How long a session lasts from its login (cookie and bearer token alike):
/// a working day; then the person logs in again.
pub const SESSION_HOURS: i64 = 8;
/// How long an invitation link works.
pub const INVITATION_DAYS: i64 = 7;

/// Failed logins held against (account, address), (address) and (account).
/// One address guessing one account is stopped after 5 tries (then one a
/// minute); one address trying many accounts after 20; one account tried
/// from many addresses after 100, so a burst from one address never locks
/// the real person out from theirs.
pub struct LoginThrottles {
    account_from_address: Throttle<(String, IpAddr)>,
    address: Throttle<IpAddr>,
    account: Throttle<String>,
}

impl Default for LoginThrottles {
    fn default() -> Self {
        let per_minute = |burst| Rate {
            per_second: 1.0 / 60.0,
            burst,
        };
        LoginThrottles {
            account_from_address: Throttle::new(per_minute(5)),
            address: Throttle::new(per_minute(20)),
            account: Throttle::new(Rate {
                per_second: 1.0,
                burst: 100,
            }),
        }
    }
}

impl LoginThrottles {
    /// `Err(seconds)` when a login of `email` from `address` must wait
    /// (also asked before any other check of a person's password).
    pub fn check(&self, email: &str, address: Option<IpAddr>) -> Result<(), u64> {
        self.account.check(&email.to_owned())?;
        if let Some(address) = address {
            self.address.check(&address)?;
            self.account_from_address
                .check(&(email.to_owned(), address))?;
        }
        Ok(())
    }

    /// Counts a wrong password for `email` from `address`.
    pub fn failed(&self, email: &str, address: Option<IpAddr>) {
        self.account.failed(email.to_owned());
        if let Some(address) = address {
            self.address.failed(address);
            self.account_from_address
                .failed((email.to_owned(), address));
        }
    }
}

/// What a login asks.
pub struct Login<'a> {
    pub email: &'a str,
    pub password: String,
    pub totp_code: Option<&'a str>,
    /// The merchant to work for (a person on several merchants' staff);
    /// `None`: the first they joined, or the platform for an operator.
    pub merchant: Option<MerchantId>,
    pub address: Option<IpAddr>,
    pub user_agent: Option<&'a str>,
}

/// A session opened.
#[derive(Debug)]
pub struct LoggedIn {
    pub token: SessionToken,
    pub session: Uuid,
    pub person: Uuid,
    pub email: String,
    /// The merchant and the role there; `None`: an operator's session.
    pub merchant: Option<(MerchantId, Role)>,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// Unknown address or wrong password: one answer for both. `person`
    /// names a known person (for their merchants' trails), never shown.
    #[error("wrong e-mail or password")]
    Refused {
        person: Option<(Uuid, Vec<MerchantId>)>,
    },
    #[error("too many failed logins; retry in {0} s")]
    Throttled(u64),
    #[error("this account needs its one-time code")]
    SecondFactorRequired,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Checks a person's password (and code) and opens a session. The answer
/// and its time are the same for an unknown address and a wrong password.
pub async fn log_in(
    pool: &PgPool,
    throttles: &LoginThrottles,
    login: Login<'_>,
) -> Result<LoggedIn, LoginError> {
    let email = Email::parse(login.email).ok();
    let key = email
        .as_ref()
        .map_or_else(|| login.email.to_lowercase(), |e| e.as_str().to_owned());
    throttles
        .check(&key, login.address)
        .map_err(LoginError::Throttled)?;
    let person = match &email {
        Some(email) => store::person_by_email(pool, email).await?,
        None => None,
    };
    let stored = person.as_ref().map(|p| p.password_hash.clone());
    let matches = secrets::verify_password_off_thread(login.password, stored).await;
    // Asked for an unknown address too (of nobody), so both take as long.
    let memberships =
        store::memberships(pool, person.as_ref().map_or(Uuid::nil(), |p| p.id)).await?;
    let merchants = || memberships.iter().map(|(m, _)| *m).collect::<Vec<_>>();
    let refused = |person: Option<&Person>| {
        throttles.failed(&key, login.address);
        LoginError::Refused {
            person: person.map(|p| (p.id, merchants())),
        }
    };
    let person = match person {
        Some(person) if matches => person,
        other => return Err(refused(other.as_ref())),
    };
    if let Some(secret) = &person.totp_secret {
        match login.totp_code {
            None => return Err(LoginError::SecondFactorRequired),
            Some(code) if !secrets::totp_accepts(secret, code, Utc::now().timestamp()) => {
                return Err(refused(Some(&person)));
            }
            Some(_) => {}
        }
    }
    let merchant = match login.merchant {
        Some(wanted) => match memberships.iter().find(|(m, _)| *m == wanted) {
            Some(found) => Some(*found),
            None => return Err(refused(Some(&person))),
        },
        None if person.operator => None,
        None => match memberships.first() {
            Some(first) => Some(*first),
            // Removed from every staff: nothing to log in to.
            None => return Err(refused(Some(&person))),
        },
    };
    let token = SessionToken::generate();
    let expires_at = Utc::now() + Duration::hours(SESSION_HOURS);
    let address = login.address.map(|a| a.to_string());
    let session = store::insert_session(
        pool,
        &store::NewSession {
            person: person.id,
            merchant: merchant.map(|(m, _)| m),
            token_hash: &token.hash(),
            expires_at,
            address: address.as_deref(),
            user_agent: login.user_agent,
        },
    )
    .await?;
    Ok(LoggedIn {
        token,
        session,
        person: person.id,
        email: person.email,
        merchant,
        expires_at,
    })
}

/// The live session of a token; `None`: no such session, revoked or expired.
pub async fn session(
    pool: &PgPool,
    token: &SessionToken,
) -> Result<Option<LiveSession>, sqlx::Error> {
    store::live_session(pool, &token.hash()).await
}

/// Ends one session.
pub async fn end_session(pool: &PgPool, session: Uuid) -> Result<(), sqlx::Error> {
    store::revoke_session(pool, session).await
}

/// Ends every session of a person (they were removed, or asked).
pub async fn end_sessions_of(pool: &PgPool, person: Uuid) -> Result<u64, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    store::revoke_sessions_of(&mut conn, person).await
}

/// Puts `email` on `merchant`'s staff as `role` with `password`: a new
/// person, or an existing one given that password. For the demo seed and
/// bootstrap tools (a request invites instead).
pub async fn put_staff_login(
    pool: &PgPool,
    merchant: MerchantId,
    email: &Email,
    password: &str,
    role: Role,
) -> Result<Uuid, sqlx::Error> {
    let hash = secrets::hash_password_off_thread(password.to_owned()).await;
    let person = match store::person_by_email(pool, email).await? {
        Some(person) => {
            store::set_password(pool, person.id, &hash).await?;
            person.id
        }
        None => {
            let mut conn = pool.acquire().await?;
            match store::insert_person(&mut conn, email, &hash, false).await? {
                Some(id) => id,
                None => return Err(sqlx::Error::RowNotFound),
            }
        }
    };
    let mut tx = crate::db::TenantTx::begin_in_directory(pool, merchant).await?;
    store::insert_staff(&mut tx, person, role).await?;
    tx.commit().await?;
    Ok(person)
}
