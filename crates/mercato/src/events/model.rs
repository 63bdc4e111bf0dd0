//! Events and webhooks without I/O: event types, the body a receiver gets, the
//! Standard Webhooks signature, the retry schedule, and which receiver
//! addresses are refused.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;

use crate::db::text_enum;

text_enum! {
    /// What happened. Each type's payload has a version (1 for all so far).
    pub enum EventType {
        OrderCreated = "order.created",
        OrderConfirmed = "order.confirmed",
        OrderFailed = "order.failed",
        OrderRefunded = "order.refunded",
        /// A confirmed order cancelled by the merchant: refunded in full, its units back.
        OrderCancelled = "order.cancelled",
        /// Units of an order shipped: the lines, carrier, tracking number, the order's fulfillment_status.
        OrderFulfilled = "order.fulfilled",
        /// Shipped units sent back: the lines, whether restocked, the refund it made.
        OrderReturned = "order.returned",
        ReservationExpired = "reservation.expired",
        InventoryLowStock = "inventory.low_stock",
        PricingRulesChanged = "pricing.rules_changed",
        PricingAnomaly = "pricing.anomaly",
        WebhookEndpointDisabled = "webhook_endpoint.disabled",
        /// A remediation adjustment was settled: charged, refunded, credited or declined.
        AdjustmentSettled = "adjustment.settled",
        /// A product was created: its name and its variants' prices.
        ProductCreated = "product.created",
        /// A product's name (or description) changed: its name and prices now.
        ProductUpdated = "product.updated",
        /// A customer's personal data was erased (only their id is said).
        CustomerErased = "customer.erased",
    }
}

/// The body a receiver gets: Standard Webhooks' `type`, `timestamp`, `data`,
/// with the event's id and payload version.
#[derive(Serialize)]
pub struct Envelope<'a> {
    pub id: &'a str,
    #[serde(rename = "type")]
    pub kind: &'a str,
    pub version: i32,
    pub timestamp: String,
    pub data: &'a serde_json::Value,
}

/// A new endpoint secret: `whsec_` and 24 random bytes in base64.
pub fn new_secret() -> String {
    use rand::RngCore;
    let mut key = [0u8; 24];
    rand::rng().fill_bytes(&mut key);
    format!("whsec_{}", BASE64.encode(key))
}

/// `v1,<base64 HMAC-SHA256 of "id.timestamp.body">` with the key the secret
/// holds (base64 after `whsec_`), or `None` for a secret that is not one.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Option<String> {
    let key = BASE64.decode(secret.strip_prefix("whsec_")?).ok()?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).ok()?;
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Some(format!("v1,{}", BASE64.encode(mac.finalize().into_bytes())))
}

/// Delays before each retry: Svix's schedule, a default of the configuration.
pub use crate::config::svix_schedule;

/// When attempt `attempts + 1` is due after `attempts` failed ones, with ±10 %
/// jitter so that retries of one outage do not arrive all at once; `None` when
/// the schedule is spent (a dead letter).
pub fn next_delay(schedule: &[Duration], attempts: usize, jitter: f64) -> Option<Duration> {
    let base = schedule.get(attempts)?;
    Some(base.mul_f64(1.0 + 0.2 * (jitter.clamp(0.0, 1.0) - 0.5)))
}

/// Why a receiver URL is refused.
pub fn check_url(raw: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(raw).map_err(|e| format!("is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("must be an http or https URL".into());
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("must name a host".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials".into());
    }
    Ok(url)
}

/// IPv4 ranges of IANA's special-purpose address registry (RFC 6890 and its
/// updates): none is an ordinary host on the internet, so none may receive.
const SPECIAL_V4: &[(Ipv4Addr, u8)] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 8),       // "this network"
    (Ipv4Addr::new(10, 0, 0, 0), 8),      // private
    (Ipv4Addr::new(100, 64, 0, 0), 10),   // carrier-grade NAT
    (Ipv4Addr::new(127, 0, 0, 0), 8),     // loopback
    (Ipv4Addr::new(169, 254, 0, 0), 16),  // link-local, cloud metadata
    (Ipv4Addr::new(172, 16, 0, 0), 12),   // private
    (Ipv4Addr::new(192, 0, 0, 0), 24),    // IETF protocol assignments
    (Ipv4Addr::new(192, 0, 2, 0), 24),    // documentation
    (Ipv4Addr::new(192, 31, 196, 0), 24), // AS112
    (Ipv4Addr::new(192, 52, 193, 0), 24), // AMT
    (Ipv4Addr::new(192, 88, 99, 0), 24),  // 6to4 relay anycast
    (Ipv4Addr::new(192, 168, 0, 0), 16),  // private
    (Ipv4Addr::new(192, 175, 48, 0), 24), // AS112 direct delegation
    (Ipv4Addr::new(198, 18, 0, 0), 15),   // benchmarking
    (Ipv4Addr::new(198, 51, 100, 0), 24), // documentation
    (Ipv4Addr::new(203, 0, 113, 0), 24),  // documentation
    (Ipv4Addr::new(224, 0, 0, 0), 4),     // multicast
    (Ipv4Addr::new(240, 0, 0, 0), 4),     // reserved, broadcast
];

/// IPv6 ranges inside global unicast (`2000::/3`) that the IANA registry
/// still sets apart. Outside `2000::/3` nothing is global unicast: loopback,
/// unspecified, IPv4-compatible (`::/96`, deprecated), unique-local,
/// link-local, site-local (`fec0::/10`), multicast, discard-only, local-use
/// NAT64 and SRv6 are all refused by that one rule.
const SPECIAL_V6: &[(Ipv6Addr, u8)] = &[
    // IETF protocol assignments, Teredo (`2001::/32`) included: a Teredo
    // address leads to whatever IPv4 host its relay is told, so none is taken.
    (Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 23),
    (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32), // documentation
    (Ipv6Addr::new(0x2620, 0x4f, 0x8000, 0, 0, 0, 0, 0), 48), // AS112
    (Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0), 20),     // documentation
];

fn in_v4(ip: Ipv4Addr, (net, len): (Ipv4Addr, u8)) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    u32::from(ip) & mask == u32::from(net) & mask
}

fn in_v6(ip: Ipv6Addr, (net, len): (Ipv6Addr, u8)) -> bool {
    let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
    u128::from(ip) & mask == u128::from(net) & mask
}

/// The IPv4 address an IPv6 one carries to an IPv4 host: IPv4-mapped
/// (`::ffff:a.b.c.d`), NAT64's well-known prefix (`64:ff9b::/96`) and 6to4
/// (`2002:aabb:ccdd::/48`).
fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let bits = u128::from(v6);
    let nat64 = Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0);
    let six_to_four = Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0);
    if let Some(v4) = v6.to_ipv4_mapped() {
        Some(v4)
    } else if in_v6(v6, (nat64, 96)) {
        Some(Ipv4Addr::from(bits as u32))
    } else if in_v6(v6, (six_to_four, 16)) {
        Some(Ipv4Addr::from((bits >> 80) as u32))
    } else {
        None
    }
}

/// Whether a receiver at `ip` is refused outside `--webhooks-allow-internal`:
/// any address that is not an ordinary host on the public internet, whatever
/// the form it is written in (an IPv6 address carrying an IPv4 one is judged
/// by the IPv4 one).
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => SPECIAL_V4.iter().any(|&range| in_v4(v4, range)),
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some(v4) => is_internal(IpAddr::V4(v4)),
            None => {
                let global_unicast = Ipv6Addr::new(0x2000, 0, 0, 0, 0, 0, 0, 0);
                !in_v6(v6, (global_unicast, 3)) || SPECIAL_V6.iter().any(|&range| in_v6(v6, range))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_follow_the_standard_webhooks_example() {
        // The spec's reference vector (standard-webhooks, "Signature scheme").
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = br#"{"test": 2432232314}"#;
        let sig = sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
        assert_eq!(
            sig.as_deref(),
            Some("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")
        );
        assert_eq!(sign("not-a-secret", "id", 1, b""), None);
        assert!(sign(&new_secret(), "id", 1, b"{}").is_some());
    }

    #[test]
    fn retries_follow_the_schedule_then_stop() {
        let schedule = svix_schedule();
        assert_eq!(next_delay(&schedule, 0, 0.5), Some(Duration::ZERO));
        assert_eq!(
            next_delay(&schedule, 2, 0.5),
            Some(Duration::from_secs(300))
        );
        let jittered = next_delay(&schedule, 1, 1.0).unwrap();
        assert!(jittered > Duration::from_secs(5) && jittered <= Duration::from_millis(5_500));
        assert_eq!(next_delay(&schedule, 8, 0.5), None);
    }

    /// Every form an internal address was accepted in (issue 35), and the
    /// ordinary ones.
    const INTERNAL: &[&str] = &[
        "127.0.0.1",
        "10.1.2.3",
        "192.168.0.1",
        "172.16.5.4",
        "169.254.169.254",
        "0.0.0.0",
        "100.64.0.1",
        "192.0.0.8",
        "192.0.2.1",
        "198.18.0.1",
        "198.19.255.254",
        "198.51.100.7",
        "203.0.113.9",
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "::",
        "::1",
        "::127.0.0.1",
        "::8.8.8.8",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "64:ff9b::127.0.0.1",
        "64:ff9b::a9fe:a9fe",
        "64:ff9b:1::8.8.8.8",
        "2002:7f00:1::",
        "2002:a9fe:a9fe::1",
        "2002:c0a8:1::",
        "2001:0:4136:e378:8000:63bf:3fff:fdd2",
        "2001:db8::1",
        "3fff::1",
        "fc00::1",
        "fd00::1",
        "fe80::1",
        "fec0::1",
        "ff02::1",
        "100::1",
        "5f00::1",
    ];

    #[test]
    fn internal_addresses_in_every_form_are_refused() {
        for ip in INTERNAL {
            assert!(is_internal(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "93.184.216.34",
            "8.8.8.8",
            "198.20.0.1",
            "2606:2800:220:1::1",
            "::ffff:93.184.216.34",
            "64:ff9b::8.8.8.8",
            "2002:5db8:d822::1",
        ] {
            assert!(!is_internal(ip.parse().unwrap()), "{ip}");
        }
    }

    proptest::proptest! {
        /// An IPv4 address is judged the same in each IPv6 form that carries it.
        #[test]
        fn an_ipv4_address_is_judged_the_same_in_every_ipv6_form(bits: u32) {
            let v4 = Ipv4Addr::from(bits);
            let internal = is_internal(IpAddr::V4(v4));
            let nat64 = (u128::from(Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0))) | u128::from(bits);
            let six_to_four = (0x2002u128 << 112) | (u128::from(bits) << 80) | 1;
            for v6 in [v4.to_ipv6_mapped(), Ipv6Addr::from(nat64), Ipv6Addr::from(six_to_four)] {
                proptest::prop_assert_eq!(is_internal(IpAddr::V6(v6)), internal, "{} as {}", v4, v6);
            }
            // IPv4-compatible addresses are deprecated and never routed: all refused.
            proptest::prop_assert!(is_internal(IpAddr::V6(v4.to_ipv6_compatible())));
        }
    }

    #[test]
    fn bad_urls_are_refused() {
        assert!(check_url("ftp://example.com/x").is_err());
        assert!(check_url("not a url").is_err());
        assert!(check_url("https://user:pw@example.com/").is_err());
        assert!(check_url("https://example.com/hook").is_ok());
    }
}
