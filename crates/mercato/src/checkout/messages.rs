//! What the shop tells its shopper about an order: confirmed, shipped,
//! cancelled, refunded. Each message is queued in the transaction of the
//! change it tells of (the mail outbox), once per order and step.

use uuid::Uuid;

use super::store::Order;
use crate::db::TenantTx;
use crate::mail::compose::{amount, bodies};
use crate::mail::OutgoingMail;

/// A step of an order the shopper hears of.
pub enum Notice<'a> {
    Confirmed,
    Shipped {
        /// Which shipment (one message each).
        fulfillment: Uuid,
        lines: &'a [(String, i64)],
        carrier: Option<&'a str>,
        tracking_number: Option<&'a str>,
    },
    Cancelled,
    Refunded {
        refund: Uuid,
        amount: i64,
    },
}

/// Queues the message of `notice` about `order` to its customer.
pub async fn tell(tx: &mut TenantTx, order: &Order, notice: Notice<'_>) -> Result<(), sqlx::Error> {
    let shop = crate::tenancy::merchant_name(tx)
        .await?
        .unwrap_or_else(|| "the shop".to_owned());
    let from = crate::mail::shop_sender(tx, &shop).await?;
    let mail = render(&shop, from, order, &notice);
    crate::mail::enqueue(tx, &mail).await?;
    Ok(())
}

fn render(shop: &str, from: Option<String>, order: &Order, notice: &Notice<'_>) -> OutgoingMail {
    let currency = order.total.currency.as_str();
    let reference = format!("order {}", order.id);
    let items: Vec<String> = order
        .items
        .iter()
        .map(|i| {
            format!(
                "{} × {} at {}",
                i.quantity,
                i.sku,
                amount(i.unit_price.amount, currency)
            )
        })
        .collect();
    let (key, subject, paragraphs) = match notice {
        Notice::Confirmed => (
            format!("order_{}_confirmed", order.id.simple()),
            format!("{shop}: your {reference} is confirmed"),
            vec![
                format!("Thank you for your order at {shop}. We have received your payment of {}.", amount(order.total.amount, currency)),
                format!("What you ordered: {}.", items.join("; ")),
                "We will write again when it ships.".to_owned(),
            ],
        ),
        Notice::Shipped {
            fulfillment,
            lines,
            carrier,
            tracking_number,
        } => {
            let shipped: Vec<String> = lines.iter().map(|(sku, q)| format!("{q} × {sku}")).collect();
            let tracking = match (carrier, tracking_number) {
                (Some(c), Some(t)) => format!("It travels with {c}, tracking number {t}."),
                (None, Some(t)) => format!("Its tracking number is {t}."),
                (Some(c), None) => format!("It travels with {c}."),
                (None, None) => "It is on its way.".to_owned(),
            };
            (
                format!("order_{}_shipment_{}", order.id.simple(), fulfillment.simple()),
                format!("{shop}: your {reference} has shipped"),
                vec![format!("We have shipped {} from your {reference}.", shipped.join("; ")), tracking],
            )
        }
        Notice::Cancelled => (
            format!("order_{}_cancelled", order.id.simple()),
            format!("{shop}: your {reference} is cancelled"),
            vec![
                format!("Your {reference} has been cancelled."),
                "What you paid is refunded to the payment method you used (and any store credit to your account); a card refund can take a few days to appear.".to_owned(),
            ],
        ),
        Notice::Refunded { refund, amount: refunded } => (
            format!("order_{}_refund_{}", order.id.simple(), refund.simple()),
            format!("{shop}: a refund for your {reference}"),
            vec![format!(
                "We have refunded {} for your {reference}. A card refund can take a few days to appear on your statement.",
                amount(*refunded, currency)
            )],
        ),
    };
    let mut paragraphs = paragraphs;
    paragraphs.push(format!("— {shop}"));
    let (text, html) = bodies(&paragraphs, &[]);
    OutgoingMail {
        key,
        from,
        to: order.customer.email.clone(),
        subject,
        text,
        html,
    }
}
