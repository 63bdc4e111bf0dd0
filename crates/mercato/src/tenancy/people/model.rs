//! People's rules, without I/O: roles and what each may do, e-mail
//! addresses, the password policy, and the secrets a person holds (session
//! and invitation tokens, the CSRF token bound to a session).

use std::fmt;

use rand::RngCore;
use serde::Serialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::db::{text_enum, MerchantId};
use crate::tenancy::scopes::{Access, Scope};

text_enum! {
    /// What a person is at a merchant. Declared from the most to the least
    /// trusted (`outranks`).
    pub enum Role {
        /// Everything, including the other owners.
        Owner = "owner",
        /// Everything but owners: cannot make, change or remove one.
        Admin = "admin",
        /// Runs the shop: catalog, stock, orders (refunds and cancellations),
        /// customers; reads pricing, webhooks, analytics and settings.
        Staff = "staff",
        /// Serves customers: orders (refunds and cancellations) and
        /// customers; reads the catalog and stock.
        Support = "support",
        /// Reads the shop: catalog, stock, orders, customers, pricing,
        /// analytics; changes nothing.
        Viewer = "viewer",
    }
}

impl Serialize for Role {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl Role {
    /// What a person of this role may do, as the scopes an API key would
    /// need for it (one table for keys and people: `docs/people.md`).
    pub fn access(self) -> Access {
        use Scope::*;
        match self {
            Role::Owner | Role::Admin => Access::Full,
            Role::Staff => Access::Scoped(vec![
                CatalogWrite,
                InventoryWrite,
                Checkout,
                OrdersWrite,
                CustomersWrite,
                PricingRead,
                WebhooksRead,
                AnalyticsRead,
                SettingsRead,
            ]),
            Role::Support => Access::Scoped(vec![
                CatalogRead,
                InventoryRead,
                OrdersWrite,
                CustomersWrite,
            ]),
            Role::Viewer => Access::Scoped(vec![
                CatalogRead,
                InventoryRead,
                OrdersRead,
                CustomersRead,
                PricingRead,
                AnalyticsRead,
            ]),
        }
    }

    /// Whether this role may invite, change and remove people of `other`'s
    /// role (and give that role): owners anyone, admins anyone but owners,
    /// the rest nobody.
    pub fn manages(self, other: Role) -> bool {
        match self {
            Role::Owner => true,
            Role::Admin => other != Role::Owner,
            _ => false,
        }
    }
}

/// The permission table of `docs/people.md`, as markdown: one row per
/// scope, a column per role (a test holds the docs to it).
pub fn permission_table() -> String {
    let mut table = String::from(
        "| scope | owner | admin | staff | support | viewer |\n|---|---|---|---|---|---|\n",
    );
    for &scope in Scope::ALL {
        table.push_str(&format!("| `{}` |", scope.as_str()));
        for &role in Role::ALL {
            table.push_str(if role.access().grants(scope) {
                " yes |"
            } else {
                " no |"
            });
        }
        table.push('\n');
    }
    table
}

/// An e-mail address as a login: trimmed and in lower case.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Result<Email, String> {
        let email = crate::validation::email(raw)?.to_lowercase();
        if email
            .chars()
            .any(|c| c.is_control() || "<>,;\"".contains(c))
            || email.matches('@').count() != 1
        {
            return Err("must be an email address".to_owned());
        }
        Ok(Email(email))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The shortest password accepted (NIST SP 800-63B asks at least 8).
pub const MIN_PASSWORD_CHARS: usize = 10;
/// The longest: hashing cost grows with it.
pub const MAX_PASSWORD_CHARS: usize = 200;

/// Passwords everyone tries first; refused whatever their length.
const COMMON_PASSWORDS: &str = include_str!("common_passwords.txt");

/// Checks a new password against the policy; the message says why not.
pub fn check_password(password: &str, email: &Email) -> Result<(), &'static str> {
    let chars = password.chars().count();
    if chars < MIN_PASSWORD_CHARS {
        return Err("must be at least 10 characters");
    }
    if chars > MAX_PASSWORD_CHARS {
        return Err("must be at most 200 characters");
    }
    let lower = password.to_lowercase();
    if COMMON_PASSWORDS
        .lines()
        .any(|common| common.trim() == lower)
    {
        return Err("is one of the most common passwords; choose another");
    }
    let mut distinct: Vec<char> = lower.chars().collect();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.len() < 4 {
        return Err("must use more than three different characters");
    }
    let local = email.as_str().split('@').next().unwrap_or_default();
    if local.len() >= 4 && lower.contains(local) {
        return Err("must not contain your e-mail address");
    }
    Ok(())
}

fn random_hex<const N: usize>() -> String {
    let mut bytes = [0u8; N];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

fn sha256(text: &str) -> Vec<u8> {
    Sha256::digest(text.as_bytes()).to_vec()
}

/// A session's secret: the cookie's value and the script's bearer token.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionToken(String);

const SESSION_PREFIX: &str = "mss_";

impl SessionToken {
    pub fn generate() -> SessionToken {
        SessionToken(format!("{SESSION_PREFIX}{}", random_hex::<32>()))
    }

    pub fn parse(raw: &str) -> Option<SessionToken> {
        let secret = raw.strip_prefix(SESSION_PREFIX)?;
        (secret.len() == 64
            && secret
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .then(|| SessionToken(raw.to_owned()))
    }

    /// What the database keeps.
    pub fn hash(&self) -> Vec<u8> {
        sha256(&self.0)
    }

    /// The CSRF token of this session: derived from its secret, so it is
    /// checked without a query, and another session's never matches.
    pub fn csrf_token(&self) -> String {
        hex::encode(&sha256(&format!("csrf:{}", self.0))[..16])
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SessionToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionToken(***)")
    }
}

/// The secret of an invitation link. It names its merchant (as an API key
/// does), so accepting it finds the invitation under row-level security.
#[derive(Clone, PartialEq, Eq)]
pub struct InvitationToken {
    pub merchant_id: MerchantId,
    secret: String,
}

const INVITATION_PREFIX: &str = "inv_";

impl InvitationToken {
    pub fn generate(merchant_id: MerchantId) -> InvitationToken {
        InvitationToken {
            merchant_id,
            secret: random_hex::<24>(),
        }
    }

    pub fn parse(raw: &str) -> Option<InvitationToken> {
        let rest = raw.strip_prefix(INVITATION_PREFIX)?;
        let (id, secret) = rest.split_once('_')?;
        let token = InvitationToken {
            merchant_id: MerchantId(Uuid::try_parse(id).ok()?),
            secret: secret.to_owned(),
        };
        let valid = secret.len() == 48
            && secret
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        // One spelling only, as for API keys.
        (valid && token.to_string() == raw).then_some(token)
    }

    pub fn hash(&self) -> Vec<u8> {
        sha256(&self.to_string())
    }
}

impl fmt::Display for InvitationToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{INVITATION_PREFIX}{}_{}",
            self.merchant_id.0.simple(),
            self.secret
        )
    }
}

impl fmt::Debug for InvitationToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InvitationToken({}, ***)", self.merchant_id.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn owners_manage_everyone_admins_all_but_owners_the_rest_nobody() {
        for &other in Role::ALL {
            assert!(Role::Owner.manages(other));
            assert_eq!(Role::Admin.manages(other), other != Role::Owner);
            for &r in &[Role::Staff, Role::Support, Role::Viewer] {
                assert!(!r.manages(other));
            }
        }
    }

    #[test]
    fn a_viewer_changes_nothing_and_support_moves_money_but_not_the_catalog() {
        let viewer = Role::Viewer.access();
        for &scope in Scope::ALL {
            if scope.as_str().ends_with(":write") || scope == Scope::Checkout {
                assert!(!viewer.grants(scope), "{}", scope.as_str());
            }
        }
        assert!(Role::Support.access().grants(Scope::OrdersWrite));
        assert!(!Role::Support.access().grants(Scope::CatalogWrite));
        assert!(!Role::Staff.access().grants(Scope::PricingWrite));
        assert!(!Role::Staff.access().grants(Scope::KeysWrite));
    }

    #[test]
    fn the_docs_show_the_permission_table_the_code_enforces() {
        let docs =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/people.md"))
                .expect("docs/people.md");
        let table = permission_table();
        assert!(
            docs.contains(&table),
            "docs/people.md should hold this table:\n{table}"
        );
    }

    #[test]
    fn the_password_policy_refuses_short_common_and_monotonous_passwords() {
        let email = Email::parse("Ada.Lovelace@Example.com").expect("an address");
        assert_eq!(email.as_str(), "ada.lovelace@example.com");
        assert!(check_password("short", &email).is_err());
        assert!(check_password("password123", &email).is_err());
        assert!(check_password("aaaaaaaaaaaa", &email).is_err());
        assert!(check_password("ada.lovelace!2024", &email).is_err());
        assert!(check_password("correct horse battery", &email).is_ok());
    }

    #[test]
    fn addresses_without_a_domain_or_with_spaces_are_refused() {
        for bad in [
            "",
            "a",
            "a@b",
            "@example.com",
            "a b@example.com",
            "a@exa mple.com",
            "a@@b.c",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn a_token_parses_back_only_from_its_own_spelling(upper in any::<bool>()) {
            let session = SessionToken::generate();
            prop_assert_eq!(SessionToken::parse(session.as_str()), Some(session.clone()));
            let invitation = InvitationToken::generate(MerchantId(Uuid::now_v7()));
            let text = invitation.to_string();
            prop_assert_eq!(InvitationToken::parse(&text), Some(invitation));
            if upper {
                prop_assert_eq!(SessionToken::parse(&session.as_str().to_uppercase()), None);
                prop_assert_eq!(InvitationToken::parse(&text.to_uppercase()), None);
            }
        }

        #[test]
        fn sessions_never_share_a_csrf_token(_n in 0..50u8) {
            prop_assert_ne!(SessionToken::generate().csrf_token(), SessionToken::generate().csrf_token());
        }
    }
}
