//! The storefront's rules, without I/O: publishable keys, allowed origins,
//! which merchant a request names, and what CORS answers.

use std::fmt;

use rand::RngCore;
use uuid::Uuid;

use crate::db::MerchantId;

/// A publishable key: `pk_{merchant}_{random}`. Naming its merchant, it is
/// looked up under that merchant's row-level security.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PublishableKey {
    pub merchant_id: MerchantId,
    secret: String,
}

const PREFIX: &str = "pk_";

impl PublishableKey {
    pub fn generate(merchant_id: MerchantId) -> PublishableKey {
        let mut bytes = [0u8; 12];
        rand::rng().fill_bytes(&mut bytes);
        PublishableKey {
            merchant_id,
            secret: hex::encode(bytes),
        }
    }

    pub fn parse(raw: &str) -> Option<PublishableKey> {
        let rest = raw.strip_prefix(PREFIX)?;
        let (id, secret) = rest.split_once('_')?;
        let key = PublishableKey {
            merchant_id: MerchantId(Uuid::try_parse(id).ok()?),
            secret: secret.to_owned(),
        };
        let valid = secret.len() == 24
            && secret
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        // One spelling only.
        (valid && key.to_string() == raw).then_some(key)
    }
}

impl fmt::Display for PublishableKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{}_{}", self.merchant_id.0.simple(), self.secret)
    }
}

impl fmt::Debug for PublishableKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublishableKey({self})")
    }
}

/// An origin a key allows: `scheme://host[:port]` in lower case, or `*`.
pub fn parse_origin(raw: &str) -> Result<String, String> {
    let origin = raw.trim().to_lowercase();
    if origin == "*" {
        return Ok(origin);
    }
    let bad = || {
        "must be an origin (https://shop.example.com, a port if not the default) or *".to_owned()
    };
    let (scheme, rest) = origin.split_once("://").ok_or_else(bad)?;
    if !matches!(scheme, "http" | "https") || rest.is_empty() || origin.len() > 200 {
        return Err(bad());
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (rest, None),
    };
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|n| n > 0));
    if host_ok && port_ok {
        Ok(origin)
    } else {
        Err(bad())
    }
}

/// What CORS lets a browser at `origin` do with an answer, given the
/// origins the key allows: `None`, nothing (the browser keeps the answer
/// from the page). A listed origin is echoed and may send credentials
/// (cookies of a customer session); `*` allows any origin, never with
/// credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorsGrant {
    pub allow_origin: String,
    pub credentials: bool,
}

pub fn cors_grant(origin: &str, allowed: &[String]) -> Option<CorsGrant> {
    let origin = origin.to_lowercase();
    if allowed.contains(&origin) {
        return Some(CorsGrant {
            allow_origin: origin,
            credentials: true,
        });
    }
    allowed.iter().any(|a| a == "*").then(|| CorsGrant {
        allow_origin: "*".to_owned(),
        credentials: false,
    })
}

/// The merchant slug a `Host` names under the store domain
/// (`acme.shop.localhost` under `shop.localhost` is `acme`), if any.
pub fn slug_of_host<'h>(host: &'h str, store_domain: &str) -> Option<&'h str> {
    let host = host.split(':').next()?;
    let sub = host.strip_suffix(store_domain)?.strip_suffix('.')?;
    (!sub.is_empty() && !sub.contains('.')).then_some(sub)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn origins_are_scheme_host_and_port_or_a_star() {
        assert_eq!(
            parse_origin("https://Shop.Example.com").as_deref(),
            Ok("https://shop.example.com")
        );
        assert_eq!(
            parse_origin("http://localhost:3000").as_deref(),
            Ok("http://localhost:3000")
        );
        assert_eq!(parse_origin("*").as_deref(), Ok("*"));
        for bad in [
            "shop.example.com",
            "ftp://x.y",
            "https://",
            "https://a b",
            "https://x:0",
            "https://x/path",
            "https://x:99999",
        ] {
            assert!(parse_origin(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_listed_origin_is_echoed_with_credentials_and_a_star_never_has_them() {
        let listed = vec!["https://shop.example.com".to_owned()];
        assert_eq!(
            cors_grant("https://shop.example.com", &listed),
            Some(CorsGrant {
                allow_origin: "https://shop.example.com".into(),
                credentials: true
            })
        );
        assert_eq!(cors_grant("https://evil.example", &listed), None);
        let any = vec!["*".to_owned()];
        assert_eq!(
            cors_grant("https://evil.example", &any),
            Some(CorsGrant {
                allow_origin: "*".into(),
                credentials: false
            })
        );
    }

    #[test]
    fn a_host_names_a_slug_one_label_under_the_store_domain() {
        assert_eq!(
            slug_of_host("acme.shop.localhost:8080", "shop.localhost"),
            Some("acme")
        );
        assert_eq!(slug_of_host("shop.localhost", "shop.localhost"), None);
        assert_eq!(slug_of_host("a.b.shop.localhost", "shop.localhost"), None);
        assert_eq!(slug_of_host("acmeshop.localhost", "shop.localhost"), None);
        assert_eq!(slug_of_host("localhost:8080", "shop.localhost"), None);
    }

    proptest! {
        #[test]
        fn a_key_parses_back_only_from_its_own_spelling(upper in any::<bool>()) {
            let key = PublishableKey::generate(MerchantId(Uuid::now_v7()));
            let text = key.to_string();
            prop_assert_eq!(PublishableKey::parse(&text), Some(key));
            if upper {
                prop_assert_eq!(PublishableKey::parse(&text.to_uppercase()), None);
            }
        }
    }
}
