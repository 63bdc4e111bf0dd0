//! Remediation without I/O: how an order's re-price is classified, the states an
//! adjustment moves through, what settle does next for each, the reminder
//! schedule, and the signed tokens of the customers' links.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as BASE64URL;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::db::text_enum;
use crate::payments::MethodStatus;

text_enum! {
    /// What the re-price says of an order.
    #[derive(Serialize, ToSchema)]
    #[serde(rename_all = "snake_case")]
    pub enum Class {
        /// Charged less than the fixed calculator's price.
        Underpaid = "underpaid",
        /// Charged more.
        Overpaid = "overpaid",
        Correct = "correct",
    }
}

/// `delta = expected − charged`: positive means the customer paid too little.
pub fn classify(charged: i64, expected: i64) -> Class {
    match expected.cmp(&charged) {
        std::cmp::Ordering::Greater => Class::Underpaid,
        std::cmp::Ordering::Less => Class::Overpaid,
        std::cmp::Ordering::Equal => Class::Correct,
    }
}

text_enum! {
    /// Where an adjustment stands.
    #[derive(Serialize, ToSchema)]
    #[serde(rename_all = "snake_case")]
    pub enum State {
        /// Charged correctly: nothing will be done.
        NothingToDo = "nothing_to_do",
        /// Mis-charged, not yet acted on (or a retryable provider failure to retry).
        Pending = "pending",
        /// Underpaid and not chargeable: the customer was asked for a new method.
        AwaitingPaymentMethod = "awaiting_payment_method",
        /// Reminders ran out: handed to support; nothing more is automatic.
        Escalated = "escalated",
        /// Overpaid: the customer was offered refund, store credit or nothing.
        AwaitingChoice = "awaiting_choice",
        /// The customer chose; carrying it out is settle's (or the link's) next step.
        ChoiceMade = "choice_made",
        /// Done: charged, refunded, credited, or declined by the customer.
        Settled = "settled",
    }
}

impl State {
    pub fn initial(class: Class) -> State {
        match class {
            Class::Correct => State::NothingToDo,
            _ => State::Pending,
        }
    }
}

text_enum! {
    /// An overpaid customer's answer.
    #[derive(Serialize, ToSchema, serde::Deserialize)]
    #[serde(rename_all = "snake_case")]
    pub enum Choice {
        Refund = "refund",
        Credit = "credit",
        None = "none",
    }
}

/// How long customers are reminded before a case goes to support.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReminderPolicy {
    /// Reminders after the first request; then escalation.
    pub reminders: u32,
    /// The wait after the first request; each later wait is twice the one before.
    pub first_wait: Duration,
}

impl Default for ReminderPolicy {
    fn default() -> Self {
        ReminderPolicy {
            reminders: 3,
            first_wait: Duration::from_secs(2 * 24 * 3600),
        }
    }
}

impl ReminderPolicy {
    /// The wait after message `sent` (0: the first request, 1: the first reminder, …).
    pub fn wait_after(&self, sent: u32) -> Duration {
        self.first_wait
            .saturating_mul(2u32.saturating_pow(sent.min(16)))
    }
}

/// What settle does next with one adjustment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Underpaid with a mandate: charge the difference off-session.
    Charge,
    /// Underpaid without one: ask for a new payment method.
    AskForPaymentMethod,
    /// The `n`th reminder (1-based).
    Remind(u32),
    /// Reminders spent: to the support queue.
    Escalate,
    /// Overpaid: offer refund, credit or nothing.
    OfferChoice,
    /// Carry out the customer's choice.
    CarryOut(Choice),
    /// The customer gave a method through the link: charge it.
    ChargeNewMethod,
    /// Nothing to do now (waiting for a customer, a due time, or done).
    Wait,
}

/// What settle knows of an adjustment when it decides.
#[derive(Clone, Debug)]
pub struct Situation {
    pub class: Class,
    pub state: State,
    pub method: MethodStatus,
    pub reminders_sent: u32,
    /// The due time has come (or none was set).
    pub due: bool,
    pub choice: Option<Choice>,
    pub new_method: bool,
}

/// The next step of an adjustment: the settlement policy of brief §3 as a function.
pub fn next_step(s: &Situation, policy: &ReminderPolicy) -> Step {
    match (s.state, s.class) {
        (State::Pending, Class::Underpaid) if !s.due => Step::Wait,
        (State::Pending, Class::Underpaid) if s.method == MethodStatus::Valid => Step::Charge,
        (State::Pending, Class::Underpaid) => Step::AskForPaymentMethod,
        (State::Pending, Class::Overpaid) => Step::OfferChoice,
        (State::AwaitingPaymentMethod, _) if s.new_method => Step::ChargeNewMethod,
        (State::AwaitingPaymentMethod, _) if !s.due => Step::Wait,
        (State::AwaitingPaymentMethod, _) if s.reminders_sent < policy.reminders => {
            Step::Remind(s.reminders_sent + 1)
        }
        (State::AwaitingPaymentMethod, _) => Step::Escalate,
        (State::ChoiceMade, _) => s.choice.map_or(Step::Wait, Step::CarryOut),
        _ => Step::Wait,
    }
}

/// What a signed link lets its holder do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkPurpose {
    Choice,
    PaymentMethod,
}

impl LinkPurpose {
    fn as_str(self) -> &'static str {
        match self {
            LinkPurpose::Choice => "choice",
            LinkPurpose::PaymentMethod => "payment-method",
        }
    }
}

/// Why a link's token is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the link is not valid")]
    Invalid,
    #[error("the link has expired")]
    Expired,
}

/// A link's token: `<merchant>.<expires unix>.<base64url HMAC-SHA256>` of
/// `adjustment.purpose.expires` under the incident's secret. The merchant is in
/// the clear so the service knows whose adjustment it is without an API key.
pub fn sign_link(
    secret: &[u8],
    merchant: Uuid,
    adjustment: Uuid,
    purpose: LinkPurpose,
    expires: i64,
) -> String {
    let sig = link_mac(secret, adjustment, purpose, expires);
    format!("{merchant}.{expires}.{}", BASE64URL.encode(sig))
}

fn link_mac(secret: &[u8], adjustment: Uuid, purpose: LinkPurpose, expires: i64) -> Vec<u8> {
    // HMAC takes a key of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(format!("{adjustment}.{}.{expires}", purpose.as_str()).as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// The merchant a token names, before its signature can be checked (the
/// secret is that merchant's).
pub fn token_merchant(token: &str) -> Result<Uuid, TokenError> {
    let merchant = token.split('.').next().ok_or(TokenError::Invalid)?;
    merchant.parse().map_err(|_| TokenError::Invalid)
}

/// Checks a token for `adjustment` and `purpose` at `now` (unix seconds).
pub fn verify_link(
    secret: &[u8],
    token: &str,
    adjustment: Uuid,
    purpose: LinkPurpose,
    now: i64,
) -> Result<(), TokenError> {
    let mut parts = token.split('.');
    let (Some(_), Some(expires), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Invalid);
    };
    let expires: i64 = expires.parse().map_err(|_| TokenError::Invalid)?;
    let sig = BASE64URL.decode(sig).map_err(|_| TokenError::Invalid)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(format!("{adjustment}.{}.{expires}", purpose.as_str()).as_bytes());
    // Constant-time comparison.
    mac.verify_slice(&sig).map_err(|_| TokenError::Invalid)?;
    if now >= expires {
        return Err(TokenError::Expired);
    }
    Ok(())
}

/// The idempotency key of an adjustment's external step: derived, never random,
/// so a rerun after any crash repeats the same call.
pub fn effect_key(adjustment: Uuid, step: &str) -> String {
    format!("adj_{}_{step}", adjustment.simple())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn situation(class: Class, state: State) -> Situation {
        Situation {
            class,
            state,
            method: MethodStatus::Valid,
            reminders_sent: 0,
            due: true,
            choice: None,
            new_method: false,
        }
    }

    proptest! {
        #[test]
        fn the_class_is_the_sign_of_the_delta(charged in 0i64..1_000_000, expected in 0i64..1_000_000) {
            let class = classify(charged, expected);
            let delta = expected - charged;
            prop_assert_eq!(class == Class::Underpaid, delta > 0);
            prop_assert_eq!(class == Class::Overpaid, delta < 0);
            prop_assert_eq!(class == Class::Correct, delta == 0);
        }

        #[test]
        fn a_customer_is_reminded_at_most_n_times_then_escalated(n in 0u32..6, first in 1u64..100_000) {
            let policy = ReminderPolicy { reminders: n, first_wait: Duration::from_secs(first) };
            let mut s = situation(Class::Underpaid, State::AwaitingPaymentMethod);
            s.method = MethodStatus::Expired;
            let mut reminders = 0;
            loop {
                match next_step(&s, &policy) {
                    Step::Remind(k) => {
                        reminders += 1;
                        prop_assert_eq!(k, reminders);
                        prop_assert!(policy.wait_after(k) > policy.wait_after(k - 1), "waits grow");
                        s.reminders_sent = k;
                    }
                    Step::Escalate => break,
                    other => prop_assert!(false, "unexpected {:?}", other),
                }
                prop_assert!(reminders <= n);
            }
            prop_assert_eq!(reminders, n);
        }

        #[test]
        fn a_token_checks_only_for_its_adjustment_purpose_and_time(
            secret in proptest::collection::vec(any::<u8>(), 16..32),
            expires in 1_000i64..2_000_000_000,
            flip in 0usize..64,
        ) {
            let (m, a) = (Uuid::now_v7(), Uuid::now_v7());
            let token = sign_link(&secret, m, a, LinkPurpose::Choice, expires);
            prop_assert_eq!(token_merchant(&token), Ok(m));
            prop_assert_eq!(verify_link(&secret, &token, a, LinkPurpose::Choice, expires - 1), Ok(()));
            prop_assert_eq!(verify_link(&secret, &token, a, LinkPurpose::Choice, expires), Err(TokenError::Expired));
            prop_assert_eq!(verify_link(&secret, &token, a, LinkPurpose::PaymentMethod, 0), Err(TokenError::Invalid));
            prop_assert_eq!(verify_link(&secret, &token, Uuid::now_v7(), LinkPurpose::Choice, 0), Err(TokenError::Invalid));
            // Any changed character of the signature or the expiry is refused.
            let mut bytes = token.into_bytes();
            let tail = bytes.len() - 1 - flip % 20;
            bytes[tail] = if bytes[tail] == b'A' { b'B' } else { b'A' };
            let tampered = String::from_utf8(bytes).expect("ascii");
            prop_assert_ne!(verify_link(&secret, &tampered, a, LinkPurpose::Choice, 0), Ok(()));
        }
    }

    #[test]
    fn settle_charges_a_mandate_asks_without_one_and_offers_the_overpaid_a_choice() {
        let policy = ReminderPolicy::default();
        let mut s = situation(Class::Underpaid, State::Pending);
        assert_eq!(next_step(&s, &policy), Step::Charge);
        s.method = MethodStatus::NoMandate;
        assert_eq!(next_step(&s, &policy), Step::AskForPaymentMethod);
        s.method = MethodStatus::Expired;
        assert_eq!(next_step(&s, &policy), Step::AskForPaymentMethod);
        let s = situation(Class::Overpaid, State::Pending);
        assert_eq!(next_step(&s, &policy), Step::OfferChoice);
        // No answer: nothing, ever.
        let s = situation(Class::Overpaid, State::AwaitingChoice);
        assert_eq!(next_step(&s, &policy), Step::Wait);
        let mut s = situation(Class::Overpaid, State::ChoiceMade);
        s.choice = Some(Choice::Credit);
        assert_eq!(next_step(&s, &policy), Step::CarryOut(Choice::Credit));
        for state in [State::NothingToDo, State::Settled, State::Escalated] {
            for class in [Class::Underpaid, Class::Overpaid, Class::Correct] {
                assert_eq!(next_step(&situation(class, state), &policy), Step::Wait);
            }
        }
        let mut s = situation(Class::Underpaid, State::AwaitingPaymentMethod);
        s.due = false;
        assert_eq!(next_step(&s, &policy), Step::Wait);
        s.new_method = true;
        assert_eq!(next_step(&s, &policy), Step::ChargeNewMethod);
    }
}
