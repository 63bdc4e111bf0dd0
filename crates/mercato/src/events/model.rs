//! Events and webhooks without I/O: event types, the body a receiver gets, the
//! Standard Webhooks signature, the retry schedule, and which receiver
//! addresses are refused.

use std::net::IpAddr;
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

/// Addresses a receiver may not have outside development: loopback, private,
/// link-local (cloud metadata at 169.254.169.254 included), unspecified,
/// carrier-grade NAT, unique-local and multicast.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || (a == 100 && (64..128).contains(&b))
                || a == 0
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || v6
                    .to_ipv4_mapped()
                    .is_some_and(|v4| is_internal(IpAddr::V4(v4)))
        }
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

    #[test]
    fn internal_addresses_and_bad_urls_are_refused() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "172.16.5.4",
            "169.254.169.254",
            "::1",
            "fd00::1",
            "fe80::1",
            "0.0.0.0",
            "100.64.0.1",
            "::ffff:127.0.0.1",
        ] {
            assert!(is_internal(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["93.184.216.34", "2606:2800:220:1::1"] {
            assert!(!is_internal(ip.parse().unwrap()), "{ip}");
        }
        assert!(check_url("ftp://example.com/x").is_err());
        assert!(check_url("not a url").is_err());
        assert!(check_url("https://user:pw@example.com/").is_err());
        assert!(check_url("https://example.com/hook").is_ok());
    }
}
