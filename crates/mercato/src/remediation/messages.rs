//! The customers' e-mails, one template per scenario, in plain words: which
//! order, how much, why, and what happens next. Plain text and HTML.

use crate::mail::OutgoingMail;

/// A template and what it says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Template {
    /// Underpaid, the difference charged: apology and a compensation code.
    UnderpaidCharged,
    /// Underpaid, not chargeable: please give a new payment method.
    UnderpaidUpdateCard,
    /// The `n`th reminder of the above.
    Reminder(u32),
    /// Overpaid: refund, store credit, or nothing.
    OverpaidChoice,
    RefundDone,
    CreditDone,
}

impl Template {
    /// The step name in the message's idempotency key.
    pub fn step(self) -> String {
        match self {
            Template::UnderpaidCharged => "mail_underpaid_charged".into(),
            Template::UnderpaidUpdateCard => "mail_underpaid_update_card".into(),
            Template::Reminder(n) => format!("mail_reminder_{n}"),
            Template::OverpaidChoice => "mail_overpaid_choice".into(),
            Template::RefundDone => "mail_refund_done".into(),
            Template::CreditDone => "mail_credit_done".into(),
        }
    }
}

/// What a message names.
pub struct Facts<'a> {
    pub order_id: uuid::Uuid,
    pub order_date: String,
    pub charged: i64,
    pub expected: i64,
    pub currency: &'a str,
    /// The apology promo code (underpaid, charged).
    pub promo_code: Option<&'a str>,
    pub promo_terms: Option<String>,
    /// Signed links: (label, url).
    pub links: Vec<(&'static str, String)>,
}

pub use crate::mail::compose::amount;

const REASON: &str = "Between the dates of the incident, a fault in our discount calculation \
priced some orders wrongly. We have recalculated every order placed in that time with the \
corrected calculation.";

pub fn render(template: Template, key: String, to: &str, f: &Facts<'_>) -> OutgoingMail {
    let charged = amount(f.charged, f.currency);
    let expected = amount(f.expected, f.currency);
    let difference = amount((f.expected - f.charged).abs(), f.currency);
    let order = format!("order {} of {}", f.order_id, f.order_date);
    let (subject, paragraphs): (String, Vec<String>) = match template {
        Template::UnderpaidCharged => (
            format!("We corrected the price of your {order}"),
            vec![
                format!("We are sorry: we charged you {charged} for your {order}, but the correct price was {expected}."),
                REASON.into(),
                format!("As agreed when you saved your payment method, we have charged the difference of {difference} to it. You do not need to do anything."),
                match (f.promo_code, &f.promo_terms) {
                    (Some(code), Some(terms)) => format!("To apologise for the trouble, here is a code for your next order: {code} ({terms})."),
                    _ => "We apologise for the trouble.".into(),
                },
            ],
        ),
        Template::UnderpaidUpdateCard | Template::Reminder(_) => (
            match template {
                Template::Reminder(n) => format!("Reminder {n}: the price of your {order}"),
                _ => format!("About the price of your {order}"),
            },
            vec![
                format!("We charged you {charged} for your {order}, but the correct price was {expected}: the difference is {difference}."),
                REASON.into(),
                "We could not charge the difference to your saved payment method (it has expired, or it cannot be charged without you). If you agree, please give us a payment method with the link below; it is charged once, for the difference only.".into(),
                "If you think this is wrong, reply to this message and our support team will help.".into(),
            ],
        ),
        Template::OverpaidChoice => (
            format!("You paid too much for your {order}"),
            vec![
                format!("We are sorry: we charged you {charged} for your {order}, but the correct price was {expected}. You paid {difference} too much."),
                REASON.into(),
                format!("Please choose what we should do with the {difference}: refund it to the payment method you used, add it as store credit to spend on your next order, or keep things as they are. Each link below works once."),
            ],
        ),
        Template::RefundDone => (
            format!("Your refund for {order}"),
            vec![
                format!("We have refunded {difference} to the payment method you used for your {order}. It can take a few days to appear on your statement."),
                "Thank you for your patience, and sorry again for the mistake.".into(),
            ],
        ),
        Template::CreditDone => (
            format!("Your store credit for {order}"),
            vec![
                format!("We have added {difference} of store credit to your account. It is taken off your next order before your card is charged."),
                "Thank you for your patience, and sorry again for the mistake.".into(),
            ],
        ),
    };
    let links: Vec<(&str, String)> = f.links.iter().map(|(l, u)| (*l, u.clone())).collect();
    let (text, html) = crate::mail::compose::bodies(&paragraphs, &links);
    OutgoingMail {
        key,
        from: None,
        to: to.to_owned(),
        subject,
        text,
        html,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_overpaid_message_names_the_order_the_amounts_and_each_choice() {
        let order = uuid::Uuid::now_v7();
        let f = Facts {
            order_id: order,
            order_date: "2026-11-03".into(),
            charged: 5400,
            expected: 4860,
            currency: "EUR",
            promo_code: None,
            promo_terms: None,
            links: vec![("Refund", "http://x/refund?a=1&b=2".into())],
        };
        let m = render(Template::OverpaidChoice, "k".into(), "ann@example.com", &f);
        assert!(m.subject.contains(&order.to_string()));
        assert!(
            m.text.contains("54.00 EUR")
                && m.text.contains("48.60 EUR")
                && m.text.contains("5.40 EUR")
        );
        assert!(m.text.contains("http://x/refund?a=1&b=2"));
        assert!(m.html.contains("a=1&amp;b=2"));
    }
}
