//! What an API key may do: its scopes, and the scope each route needs.
//! A key without scopes (every key made before scopes existed, and the
//! admin's) has full access. A route the table below does not name needs
//! full access: a new route is closed to scoped keys until it is mapped.

use axum::http::Method;
use serde::Serialize;

use crate::db::text_enum;

text_enum! {
    /// One thing a scoped key may do. `…:write` includes `…:read`.
    #[derive(PartialOrd, Ord)]
    pub enum Scope {
        CatalogRead = "catalog:read",
        CatalogWrite = "catalog:write",
        InventoryRead = "inventory:read",
        InventoryWrite = "inventory:write",
        /// Reserve, quote and check out (what a storefront's server does).
        Checkout = "checkout",
        OrdersRead = "orders:read",
        OrdersWrite = "orders:write",
        CustomersRead = "customers:read",
        CustomersWrite = "customers:write",
        PricingRead = "pricing:read",
        PricingWrite = "pricing:write",
        WebhooksRead = "webhooks:read",
        WebhooksWrite = "webhooks:write",
        AnalyticsRead = "analytics:read",
        AuditRead = "audit:read",
        SettingsRead = "settings:read",
        SettingsWrite = "settings:write",
        /// Make, list and revoke keys (never with more scopes than its own).
        KeysWrite = "keys:write",
        /// Invite, change and remove the merchant's people.
        StaffWrite = "staff:write",
    }
}

impl Serialize for Scope {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl Scope {
    /// The read scope a write scope includes.
    fn read_of(self) -> Option<Scope> {
        Some(match self {
            Scope::CatalogWrite => Scope::CatalogRead,
            Scope::InventoryWrite => Scope::InventoryRead,
            Scope::OrdersWrite => Scope::OrdersRead,
            Scope::CustomersWrite => Scope::CustomersRead,
            Scope::PricingWrite => Scope::PricingRead,
            Scope::WebhooksWrite => Scope::WebhooksRead,
            Scope::SettingsWrite => Scope::SettingsRead,
            _ => return None,
        })
    }
}

/// What a key may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    Full,
    Scoped(Vec<Scope>),
}

impl Access {
    /// From the stored column: `None` is full access.
    pub fn from_stored(scopes: Option<Vec<String>>) -> Result<Access, String> {
        match scopes {
            None => Ok(Access::Full),
            Some(raw) => raw
                .iter()
                .map(|s| Scope::parse(s))
                .collect::<Result<Vec<_>, _>>()
                .map(Access::Scoped),
        }
    }

    pub fn grants(&self, scope: Scope) -> bool {
        match self {
            Access::Full => true,
            Access::Scoped(scopes) => scopes
                .iter()
                .any(|&s| s == scope || s.read_of() == Some(scope)),
        }
    }

    /// Whether a route needing `needed` (`None`: full access) is allowed.
    pub fn allows(&self, needed: Option<Scope>) -> bool {
        match needed {
            Some(scope) => self.grants(scope),
            None => *self == Access::Full,
        }
    }

    /// The scopes as stored and shown (`None`: full access).
    pub fn scopes(&self) -> Option<Vec<Scope>> {
        match self {
            Access::Full => None,
            Access::Scoped(scopes) => Some(scopes.clone()),
        }
    }
}

/// The scope a merchant route needs (`path` as the router matched it, e.g.
/// `/v1/products/{id}`); `None`: full access only.
pub fn required(method: &Method, path: &str) -> Option<Scope> {
    let read = method == Method::GET || method == Method::HEAD;
    let pick = |r: Scope, w: Scope| Some(if read { r } else { w });
    // Every request asks: no allocation.
    let under = |prefix: &str| {
        path.strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    };
    if under("/v1/checkouts") || under("/v1/reservations") || path == "/v1/pricing/quote" {
        // Reading a checkout's order or reservation back is part of checking out.
        return Some(Scope::Checkout);
    }
    if under("/v1/products") {
        return pick(Scope::CatalogRead, Scope::CatalogWrite);
    }
    if under("/v1/inventory") {
        return pick(Scope::InventoryRead, Scope::InventoryWrite);
    }
    // The support worklist is of remediation's escalations: orders' business.
    if under("/v1/orders") || under("/v1/legacy-orders") || under("/v1/support") {
        return pick(Scope::OrdersRead, Scope::OrdersWrite);
    }
    if under("/v1/customers") {
        return pick(Scope::CustomersRead, Scope::CustomersWrite);
    }
    if under("/v1/pricing") {
        return pick(Scope::PricingRead, Scope::PricingWrite);
    }
    if under("/v1/webhook-endpoints") || under("/v1/events") {
        return pick(Scope::WebhooksRead, Scope::WebhooksWrite);
    }
    if under("/v1/analytics") {
        return Some(Scope::AnalyticsRead);
    }
    if under("/v1/audit-log") {
        return Some(Scope::AuditRead);
    }
    if under("/v1/mail-settings") || under("/v1/fulfillment-settings") {
        return pick(Scope::SettingsRead, Scope::SettingsWrite);
    }
    if under("/v1/api-keys") || under("/v1/publishable-keys") {
        return Some(Scope::KeysWrite);
    }
    if under("/v1/staff") {
        return Some(Scope::StaffWrite);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_scope_includes_its_read_scope_and_nothing_else() {
        let access = Access::Scoped(vec![Scope::CatalogWrite]);
        assert!(access.grants(Scope::CatalogWrite));
        assert!(access.grants(Scope::CatalogRead));
        assert!(!access.grants(Scope::InventoryRead));
        assert!(!access.allows(None), "an unmapped route needs full access");
        assert!(Access::Full.allows(None));
        let reader = Access::Scoped(vec![Scope::OrdersRead]);
        assert!(!reader.grants(Scope::OrdersWrite));
    }

    #[test]
    fn routes_map_to_the_scope_of_their_area_and_verb() {
        assert_eq!(
            required(&Method::GET, "/v1/products/{id}"),
            Some(Scope::CatalogRead)
        );
        assert_eq!(
            required(&Method::PATCH, "/v1/products/{id}"),
            Some(Scope::CatalogWrite)
        );
        assert_eq!(
            required(&Method::POST, "/v1/checkouts"),
            Some(Scope::Checkout)
        );
        assert_eq!(
            required(&Method::POST, "/v1/orders/{id}/cancel"),
            Some(Scope::OrdersWrite)
        );
        assert_eq!(required(&Method::GET, "/v1/productsx"), None);
        assert_eq!(required(&Method::GET, "/v1/merchants/{id}"), None);
    }

    #[test]
    fn unknown_stored_scopes_are_refused_not_ignored() {
        assert!(Access::from_stored(Some(vec!["catalog:read".into(), "root".into()])).is_err());
        assert_eq!(Access::from_stored(None), Ok(Access::Full));
    }
}
