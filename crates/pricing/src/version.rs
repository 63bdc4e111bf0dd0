//! Calculator versions. Each is kept forever, so any order can be re-priced with the
//! version it was priced with (to reproduce it) or with another (to compare).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::money::Rounding;

/// Which algorithm prices a cart. Stored with every order as `"v1"`, `"v2"`, …
///
/// Never change what an existing version computes: add a version instead, run it in
/// shadow, then switch. The differences between versions:
///
/// | version | change |
/// |---|---|
/// | `v1` | the first algorithm: percent discounts (item and order level, buy-X-get-Y, tiers) round **half to even** |
/// | `v2` | as `v1`, but percent discounts round **half up** (2.5 cents → 3), as a customer computes by hand; differs from `v1` only when a percentage lands on exactly half a minor unit |
/// | `v3` | **withdrawn** (the pricing incident of the brief): as `v2`, but an order-level percentage is taken of the subtotal before earlier discounts (stacked discounts over-discount: customers underpaid), and `tiers` give the *lowest* tier reached (customers overpaid). Kept so that the orders it priced can be reproduced; it can never be put in force again |
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CalculatorVersion {
    V1,
    V2,
    V3,
}

impl CalculatorVersion {
    /// Every version that may price new orders, oldest first.
    pub const ALL: [CalculatorVersion; 2] = [CalculatorVersion::V1, CalculatorVersion::V2];
    /// Versions found defective: they re-price the orders they priced, and nothing else.
    pub const WITHDRAWN: [CalculatorVersion; 1] = [CalculatorVersion::V3];
    pub const LATEST: CalculatorVersion = CalculatorVersion::V2;

    /// Parses a version to put in force (settings, rollouts): a withdrawn one is refused.
    pub fn parse_in_force(raw: &str) -> Result<Self, UnknownVersion> {
        let version: CalculatorVersion = raw.parse()?;
        if version.is_withdrawn() {
            return Err(UnknownVersion(raw.to_owned()));
        }
        Ok(version)
    }

    pub fn is_withdrawn(self) -> bool {
        CalculatorVersion::WITHDRAWN.contains(&self)
    }

    /// `v3`'s defect: order-level percentages of the subtotal, not of what is left.
    pub(crate) fn percent_of_subtotal(self) -> bool {
        self == CalculatorVersion::V3
    }

    /// `v3`'s defect: the lowest tier reached, not the highest.
    pub(crate) fn lowest_tier(self) -> bool {
        self == CalculatorVersion::V3
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CalculatorVersion::V1 => "v1",
            CalculatorVersion::V2 => "v2",
            CalculatorVersion::V3 => "v3",
        }
    }

    /// How this version rounds a percentage of an amount.
    pub fn percent_rounding(self) -> Rounding {
        match self {
            CalculatorVersion::V1 => Rounding::HalfEven,
            CalculatorVersion::V2 | CalculatorVersion::V3 => Rounding::HalfUp,
        }
    }
}

impl fmt::Display for CalculatorVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown calculator version {0:?}; in force may be: v1, v2 (v3 is withdrawn)")]
pub struct UnknownVersion(pub String);

impl FromStr for CalculatorVersion {
    type Err = UnknownVersion;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CalculatorVersion::ALL
            .into_iter()
            .chain(CalculatorVersion::WITHDRAWN)
            .find(|v| v.as_str() == s)
            .ok_or_else(|| UnknownVersion(s.to_owned()))
    }
}
