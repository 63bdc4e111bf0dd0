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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CalculatorVersion {
    V1,
    V2,
}

impl CalculatorVersion {
    /// Every version, oldest first.
    pub const ALL: [CalculatorVersion; 2] = [CalculatorVersion::V1, CalculatorVersion::V2];
    pub const LATEST: CalculatorVersion = CalculatorVersion::V2;

    pub fn as_str(self) -> &'static str {
        match self {
            CalculatorVersion::V1 => "v1",
            CalculatorVersion::V2 => "v2",
        }
    }

    /// How this version rounds a percentage of an amount.
    pub fn percent_rounding(self) -> Rounding {
        match self {
            CalculatorVersion::V1 => Rounding::HalfEven,
            CalculatorVersion::V2 => Rounding::HalfUp,
        }
    }
}

impl fmt::Display for CalculatorVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown calculator version {0:?}; known: v1, v2")]
pub struct UnknownVersion(pub String);

impl FromStr for CalculatorVersion {
    type Err = UnknownVersion;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CalculatorVersion::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| UnknownVersion(s.to_owned()))
    }
}
