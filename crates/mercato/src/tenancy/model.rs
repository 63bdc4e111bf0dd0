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
        let key = valid_secret.then(|| ApiKey {
            merchant_id,
            secret: secret.to_owned(),
        })?;
        // One spelling only: a key is its canonical text (the id as 32
        // lower-case hex digits), so no other spelling of the merchant id
        // (hyphens, upper case, braces) reaches the same stored hash.
        (key.to_string() == raw).then_some(key)
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

/// Turns across merchants for a background worker. Each batch's query gives
/// every merchant with work an equal share of the batch, merchants in id order
/// starting after the one `after` names and wrapping around; so a merchant
/// with a backlog gets its share of each batch and the others never wait
/// behind it. (A share a merchant leaves unused is not handed to the others
/// within that batch; the next batch follows.)
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rotation {
    after: Option<MerchantId>,
}

impl Rotation {
    /// Merchants with an id above this one come first in the next batch (the
    /// nil id, below every merchant's, before the first batch).
    pub fn after(&self) -> Uuid {
        self.after.map_or(Uuid::nil(), |m| m.0)
    }

    /// Records a batch: the merchant of each row, as the query returned them
    /// (grouped, in turn order), of `waiting` merchants with work in all. Cut
    /// short, the next batch begins after the last merchant served; reaching
    /// them all, it begins one merchant later than this one did, so no merchant
    /// is always first. After an empty batch, from the beginning.
    pub fn served(&mut self, batch: &[MerchantId], waiting: usize) {
        let reached = 1 + batch.windows(2).filter(|w| w[0] != w[1]).count();
        self.after = if reached < waiting {
            batch.last().copied()
        } else {
            batch.first().copied()
        };
    }
}

/// `work` in turns: every merchant's first item (merchants in the order they
/// first appear), then every merchant's second, and so on; each merchant's
/// items keep their order. A worker that handles one item at a time thus
/// serves a merchant's share without making the next merchant wait for all of it.
pub fn in_turns<T>(work: Vec<(MerchantId, T)>) -> Vec<(MerchantId, T)> {
    let mut queues: Vec<(MerchantId, std::collections::VecDeque<T>)> = Vec::new();
    for (merchant, item) in work {
        match queues.iter_mut().find(|(m, _)| *m == merchant) {
            Some((_, queue)) => queue.push_back(item),
            None => queues.push((merchant, [item].into())),
        }
    }
    let mut turns = Vec::new();
    loop {
        let before = turns.len();
        for (merchant, queue) in &mut queues {
            if let Some(item) = queue.pop_front() {
                turns.push((*merchant, item));
            }
        }
        if turns.len() == before {
            return turns;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn merchant(n: u8) -> MerchantId {
        MerchantId(Uuid::from_u128(n as u128 + 1))
    }

    proptest! {
        /// Turns keep every item and each merchant's order, and no merchant
        /// gets a second turn before every merchant that still has work got its first.
        #[test]
        fn turns_are_fair_and_lose_nothing(work in proptest::collection::vec((0u8..6, 0u32..1000), 0..200)) {
            let work: Vec<(MerchantId, (u8, usize, u32))> = work
                .into_iter()
                .enumerate()
                .map(|(i, (m, v))| (merchant(m), (m, i, v)))
                .collect();
            let turns = in_turns(work.clone());
            prop_assert_eq!(turns.len(), work.len());
            let mut expected: Vec<_> = work.iter().map(|(_, item)| *item).collect();
            let mut got: Vec<_> = turns.iter().map(|(_, item)| *item).collect();
            for m in 0..6u8 {
                let mine = |items: &[(u8, usize, u32)]| items.iter().filter(|i| i.0 == m).map(|i| i.1).collect::<Vec<_>>();
                prop_assert_eq!(mine(&got), mine(&expected), "merchant {}'s order", m);
            }
            // Prefix balance: after any prefix, a merchant served k+2 times
            // means no merchant with work left was served only k times.
            let total = |m: MerchantId| work.iter().filter(|(w, _)| *w == m).count();
            let mut served: std::collections::HashMap<MerchantId, usize> =
                work.iter().map(|(m, _)| (*m, 0)).collect();
            for (m, _) in &turns {
                let count = served.entry(*m).or_insert(0);
                *count += 1;
                let most = *count;
                for (other, n) in &served {
                    if *n < total(*other) {
                        prop_assert!(most <= n + 1, "{:?} took turn {} while {:?} had had {}", m, most, other, n);
                    }
                }
            }
            got.sort();
            expected.sort();
            prop_assert_eq!(got, expected);
        }
    }

    #[test]
    fn the_rotation_resumes_after_a_cut_batch_and_moves_the_first_place_otherwise() {
        let mut rotation = Rotation::default();
        assert_eq!(rotation.after(), Uuid::nil());
        // Of 4 merchants waiting, the batch reached 2: the next starts after the 2nd.
        rotation.served(&[merchant(1), merchant(1), merchant(2)], 4);
        assert_eq!(rotation.after(), merchant(2).0);
        // It reached all 3 waiting: the next starts one later than this one did.
        rotation.served(&[merchant(3), merchant(4), merchant(4), merchant(1)], 3);
        assert_eq!(rotation.after(), merchant(3).0);
        rotation.served(&[], 0);
        assert_eq!(rotation.after(), Uuid::nil());
    }

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
