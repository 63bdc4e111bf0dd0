use std::fmt;

use rand::RngCore;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::db::text_enum;
pub use crate::db::MerchantId;

text_enum! {
    /// How a merchant's units are taken from stock. All three leave the same
    /// rows behind (a reservation); they differ in how concurrent buyers of one
    /// SKU are serialised. A merchant setting (column `merchants.stock_strategy`).
    #[derive(serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
    #[serde(rename_all = "lowercase")]
    pub enum Strategy {
        /// `SELECT … FOR UPDATE` the stock rows, check, update.
        Pessimistic = "pessimistic",
        /// One conditional `UPDATE … WHERE on_hand - reserved >= q` per SKU.
        Optimistic = "optimistic",
        /// Per-SKU FIFO admission: one task per hot SKU grants whole batches in one transaction.
        Reservation = "reservation",
    }
}

/// URL-safe merchant handle: lower-case letters, digits and `-`, 2 to 63 chars.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slug(String);

impl Slug {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let ok_len = (2..=63).contains(&raw.len());
        let ok_chars = raw
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if ok_len && ok_chars && !raw.starts_with('-') {
            Ok(Slug(raw.to_owned()))
        } else {
            Err("must be 2-63 lower-case letters, digits or '-', not starting with '-'".into())
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A merchant's display name: 1 to 200 characters after trimming.
#[derive(Clone, Debug)]
pub struct MerchantName(String);

impl MerchantName {
    pub fn parse(raw: &str) -> Result<Self, String> {
        crate::validation::display_name(raw).map(MerchantName)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A merchant API key: `mk_<merchant id, 32 hex>_<secret, 48 hex>`.
///
/// The key names its merchant, so the tenant is known before any lookup and the
/// key check itself runs under that tenant's row-level security. Only the
/// SHA-256 of the whole key is stored.
#[derive(Clone, Debug)]
pub struct ApiKey {
    pub merchant_id: MerchantId,
    pub secret: String,
}

const PREFIX: &str = "mk_";

impl ApiKey {
    pub fn generate(merchant_id: MerchantId) -> Self {
        let mut bytes = [0u8; 24];
        rand::rng().fill_bytes(&mut bytes);
        ApiKey {
            merchant_id,
            secret: hex::encode(bytes),
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        let rest = raw.strip_prefix(PREFIX)?;
        let (id, secret) = rest.split_once('_')?;
        let merchant_id = MerchantId(Uuid::try_parse(id).ok()?);
        let valid_secret = secret.len() == 48 && secret.bytes().all(|b| b.is_ascii_hexdigit());
        valid_secret.then(|| ApiKey {
            merchant_id,
            secret: secret.to_owned(),
        })
    }

    pub fn hash(&self) -> Vec<u8> {
        Sha256::digest(self.to_string().as_bytes()).to_vec()
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{}_{}", self.merchant_id.0.simple(), self.secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_parses_back_to_its_merchant() {
        let merchant = MerchantId::new();
        let key = ApiKey::generate(merchant);
        let parsed = ApiKey::parse(&key.to_string()).expect("parses");
        assert_eq!(parsed.merchant_id, merchant);
        assert_eq!(parsed.hash(), key.hash());
    }

    #[test]
    fn malformed_keys_are_rejected() {
        for raw in [
            "",
            "mk_",
            "sk_abc_def",
            "mk_nothex_0123",
            "mk_00000000000000000000000000000000_short",
        ] {
            assert!(ApiKey::parse(raw).is_none(), "{raw}");
        }
    }

    #[test]
    fn slugs_are_checked() {
        assert!(Slug::parse("acme-shop").is_ok());
        for bad in ["A", "-x", "has space", "ÜBER", ""] {
            assert!(Slug::parse(bad).is_err(), "{bad}");
        }
    }
}
