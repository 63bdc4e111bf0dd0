//! What `GET /v1/orders` may be narrowed by, parsed at the edge: each bad
//! value names its parameter.

use chrono::{DateTime, Utc};

use super::store::{FulfillmentStatus, OrderStatus};
use crate::catalog::Sku;
use crate::validation::{self, optional, timestamp, FieldErrors, Invalid};

/// The raw filter parameters, as the query string gives them.
#[derive(Debug, Default)]
pub struct RawOrderFilter<'a> {
    pub status: Option<&'a str>,
    pub fulfillment_status: Option<&'a str>,
    pub email: Option<&'a str>,
    pub customer_id: Option<&'a str>,
    pub sku: Option<&'a str>,
    pub created_from: Option<&'a str>,
    pub created_to: Option<&'a str>,
}

/// Orders that match every filter given; none given, every order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OrderFilter {
    pub status: Option<OrderStatus>,
    pub fulfillment_status: Option<FulfillmentStatus>,
    /// The customer's e-mail, matched case-insensitively.
    pub email: Option<String>,
    /// The customer's id.
    pub customer_id: Option<uuid::Uuid>,
    /// Orders with a line of this SKU.
    pub sku: Option<String>,
    /// Placed at or after.
    pub created_from: Option<DateTime<Utc>>,
    /// Placed before.
    pub created_to: Option<DateTime<Utc>>,
}

impl OrderFilter {
    pub fn parse(raw: &RawOrderFilter<'_>) -> Result<Self, Invalid> {
        let mut errors = FieldErrors::default();
        let status = optional(&mut errors, "status", raw.status, OrderStatus::parse);
        let fulfillment_status = optional(
            &mut errors,
            "fulfillment_status",
            raw.fulfillment_status,
            FulfillmentStatus::parse,
        );
        let email = optional(&mut errors, "email", raw.email, validation::email);
        let customer_id = optional(&mut errors, "customer_id", raw.customer_id, |s| {
            uuid::Uuid::try_parse(s).map_err(|_| "must be a customer id".to_owned())
        });
        let sku = optional(&mut errors, "sku", raw.sku, |s| {
            Sku::parse(s).map(|_| s.to_owned())
        });
        let from = optional(&mut errors, "created_from", raw.created_from, timestamp);
        let to = optional(&mut errors, "created_to", raw.created_to, timestamp);
        if let (Some(Some(from)), Some(Some(to))) = (from, to) {
            if to <= from {
                errors.push("created_to", "must be later than created_from");
            }
        }
        let parsed = status
            .zip(fulfillment_status)
            .zip(email)
            .zip(customer_id)
            .zip(sku)
            .zip(from)
            .zip(to)
            .map(
                |(
                    (((((status, fulfillment_status), email), customer_id), sku), created_from),
                    created_to,
                )| {
                    OrderFilter {
                        status,
                        fulfillment_status,
                        email,
                        customer_id,
                        sku,
                        created_from,
                        created_to,
                    }
                },
            );
        errors.finish(parsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_bad_value_names_its_parameter() {
        let raw = RawOrderFilter {
            status: Some("shipped"),
            fulfillment_status: Some("partial"),
            email: Some("nobody"),
            customer_id: Some("not-a-uuid"),
            sku: Some("no spaces"),
            created_from: Some("yesterday"),
            created_to: Some("2026-13-01T00:00:00Z"),
        };
        assert_eq!(
            OrderFilter::parse(&raw).unwrap_err().fields(),
            [
                "status",
                "fulfillment_status",
                "email",
                "customer_id",
                "sku",
                "created_from",
                "created_to"
            ]
        );
    }

    #[test]
    fn good_values_parse_and_an_empty_range_is_refused() {
        let raw = RawOrderFilter {
            status: Some("cancelled"),
            fulfillment_status: Some("partially_fulfilled"),
            email: Some("Ann@Example.com"),
            customer_id: None,
            sku: Some("TEE-1"),
            created_from: Some("2026-12-01T00:00:00+01:00"),
            created_to: Some("2026-12-02T00:00:00Z"),
        };
        let filter = OrderFilter::parse(&raw).unwrap();
        assert_eq!(filter.status, Some(OrderStatus::Cancelled));
        assert_eq!(
            filter.fulfillment_status,
            Some(FulfillmentStatus::PartiallyFulfilled)
        );
        assert_eq!(
            filter.created_from.unwrap().to_rfc3339(),
            "2026-11-30T23:00:00+00:00"
        );
        let backwards = RawOrderFilter {
            created_from: Some("2026-12-02T00:00:00Z"),
            created_to: Some("2026-12-02T00:00:00Z"),
            ..RawOrderFilter::default()
        };
        assert_eq!(
            OrderFilter::parse(&backwards).unwrap_err().fields(),
            ["created_to"]
        );
    }
}
