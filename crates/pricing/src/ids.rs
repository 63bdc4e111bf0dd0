//! Identifiers that are copied into every breakdown (SKUs, rule ids). Short ones —
//! nearly all — are stored inline, so a copy is a plain memory copy: no allocation
//! and no atomic reference count. Each carries a fingerprint of its text, so
//! comparing two different ones rarely needs to look at the text.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Texts up to this many bytes are stored inline.
const INLINE: usize = 23;

/// Inline text: 24 bytes, 8-aligned, so that copying it is three plain word moves
/// (an odd layout made copies stall on store forwarding in the hot loop).
#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct InlineText {
    bytes: [u8; INLINE],
    len: u8,
}

enum Text {
    Inline(InlineText),
    Shared(Arc<str>),
}

impl Clone for Text {
    fn clone(&self) -> Self {
        match self {
            Text::Inline(inline) => Text::Inline(*inline),
            Text::Shared(text) => Text::Shared(Arc::clone(text)),
        }
    }
}

impl Text {
    fn new(text: &str) -> Self {
        match u8::try_from(text.len()) {
            Ok(len) if text.len() <= INLINE => {
                let mut bytes = [0; INLINE];
                bytes[..text.len()].copy_from_slice(text.as_bytes());
                Text::Inline(InlineText { bytes, len })
            }
            _ => Text::Shared(text.into()),
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            Text::Inline(inline) => &inline.bytes[..usize::from(inline.len)],
            Text::Shared(text) => text.as_bytes(),
        }
    }

    fn as_str(&self) -> &str {
        match self {
            // Copied from a whole `&str`, so always UTF-8; checked rather than assumed
            // to keep the crate free of `unsafe`.
            Text::Inline(_) => std::str::from_utf8(self.as_bytes()).unwrap_or_default(),
            Text::Shared(text) => text,
        }
    }
}

macro_rules! identifier {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone)]
        pub struct $name {
            text: Text,
            fingerprint: u64,
        }

        impl $name {
            pub fn new(text: &str) -> Self {
                $name {
                    text: Text::new(text),
                    fingerprint: fingerprint(text.as_bytes()),
                }
            }

            pub fn as_str(&self) -> &str {
                self.text.as_str()
            }

            /// A deterministic 64-bit hash of the text: equal texts, equal fingerprints.
            #[allow(dead_code)] // set lookups use it for SKUs; rule ids only in `eq`
            pub(crate) fn fingerprint(&self) -> u64 {
                self.fingerprint
            }
        }

        impl PartialEq for $name {
            fn eq(&self, other: &Self) -> bool {
                self.fingerprint == other.fingerprint
                    && self.text.as_bytes() == other.text.as_bytes()
            }
        }

        impl Eq for $name {}

        // Order and hash exactly as the text does, as `Borrow<str>` requires
        // (`str` orders by bytes).
        impl Ord for $name {
            fn cmp(&self, other: &Self) -> Ordering {
                self.text.as_bytes().cmp(other.text.as_bytes())
            }
        }

        impl PartialOrd for $name {
            fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
                Some(self.cmp(other))
            }
        }

        impl Hash for $name {
            fn hash<H: Hasher>(&self, state: &mut H) {
                self.as_str().hash(state)
            }
        }

        impl From<&str> for $name {
            fn from(text: &str) -> Self {
                $name::new(text)
            }
        }

        impl From<String> for $name {
            fn from(text: String) -> Self {
                $name::new(&text)
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                self.as_str()
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.text.as_bytes() == other.as_bytes()
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.text.as_bytes() == other.as_bytes()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(self.as_str(), f)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                String::deserialize(deserializer).map($name::from)
            }
        }
    };
}

identifier!(
    /// A stock-keeping unit code as the catalog gave it. The catalog validates its shape;
    /// pricing only compares SKUs for equality and order.
    Sku
);

identifier!(
    /// The `id` of a pricing rule, unique within a rule set.
    RuleId
);

identifier!(
    /// The `group` of a pricing rule: at most one rule of a group applies.
    GroupName
);

/// FNV-1a: deterministic (no per-process seed), and fast on short keys like SKUs.
fn fingerprint(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn short_and_long_identifiers_behave_like_their_text() {
        let long = "A-VERY-LONG-SKU-THAT-DOES-NOT-FIT-INLINE";
        for text in ["", "SHOE-01", "exactly-23-bytes-long!!", long, "ünïcødé"] {
            let sku = Sku::from(text);
            assert_eq!(sku.as_str(), text);
            assert_eq!(sku, Sku::from(text.to_owned()));
            assert_eq!(
                serde_json::to_string(&sku).ok(),
                serde_json::to_string(text).ok()
            );
        }
        let (a, b, long) = (Sku::from("A"), Sku::from("B"), Sku::from(long));
        assert_eq!(a.cmp(&b), Ordering::Less);
        assert_eq!(long.cmp(&b), Ordering::Less);
        let mut map = BTreeMap::new();
        map.insert(RuleId::from("summer10"), 1);
        assert_eq!(map.get("summer10"), Some(&1));
    }
}
