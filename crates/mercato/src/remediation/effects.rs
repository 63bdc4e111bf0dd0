//! The external effects of settling (charges, refunds, credits), each keyed
//! (`effect_key`) and recorded before the call, so a crash never repeats one.

use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::messages;
use super::model::*;
use super::store::{self, AdjustmentRow};
use super::{RemediationError, SettleOptions, Template};
use crate::cells::MerchantDb;
use crate::db::TenantTx;
use crate::events::EventType;
use crate::payments::{ChargeRequest, PaymentError, PaymentProvider};

/// The step (and so the key) of charging a method the customer gave: one key
/// per method, so the same method again repeats its call and another gets its own.
pub(super) fn customer_charge_step(method: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(method.as_bytes());
    format!("customer_charge_{}", hex::encode(&digest[..6]))
}

pub(super) enum Charged {
    Yes,
    /// The provider's answer is unknown or it was busy: the same key again later.
    Retry,
    /// A final refusal: the customer is asked for a new method.
    Refused,
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn charge(
    db: &MerchantDb,
    provider: &dyn PaymentProvider,
    options: &SettleOptions,
    a: &AdjustmentRow,
    step: &str,
    method: &str,
    promo: Option<&(String, String)>,
    ask_links: Vec<(&'static str, String)>,
) -> Result<Charged, RemediationError> {
    let merchant = db.merchant();
    let key = effect_key(a.id, step);
    let kind = if step == "charge" {
        "charge"
    } else {
        "customer_charge"
    };
    let mut tx = db.begin().await?;
    store::begin_effect(&mut tx, &key, a.id, kind, a.delta).await?;
    tx.commit().await?;
    let request = ChargeRequest {
        idempotency_key: key.clone(),
        payment_method: method.to_owned(),
        amount: a.delta,
        currency: a.currency.clone(),
    };
    let result = if kind == "customer_charge" {
        // The customer is present (they gave the method through the link).
        match provider.authorize(merchant, &request).await {
            Ok(p) => provider.capture(merchant, p.id).await,
            Err(e) => Err(e),
        }
    } else {
        provider.charge_off_session(merchant, &request).await
    };
    // An answer lost on the way back: the provider's record under the key says
    // whether the charge went through.
    let result = match result {
        Err(err) if err.is_retryable() => match provider.find(merchant, &key).await {
            Ok(Some(p)) if p.status == crate::payments::PaymentStatus::Captured => Ok(p),
            _ => Err(err),
        },
        other => other,
    };
    let mut tx = db.begin().await?;
    let outcome = match result {
        Ok(payment) => {
            store::finish_effect(&mut tx, &key, true, &payment.id.to_string()).await?;
            if mark_settled(&mut tx, a, a.state).await? {
                queue_mail(&mut tx, a, Template::UnderpaidCharged, promo, Vec::new()).await?;
                settled_event(&mut tx, a, "charged", a.delta).await?;
            }
            Charged::Yes
        }
        Err(err) if err.is_retryable() => {
            store::transition(
                &mut tx,
                a.id,
                a.state,
                a.state,
                a.reminders_sent,
                Some(after(options.retry_after)),
                Some(&err.to_string()),
            )
            .await?;
            Charged::Retry
        }
        Err(err) => {
            store::finish_effect(&mut tx, &key, false, &err.to_string()).await?;
            if a.state == State::Pending {
                // Declined, expired or needing the customer: ask them.
                let wait = options.reminders.wait_after(0);
                if store::transition(
                    &mut tx,
                    a.id,
                    State::Pending,
                    State::AwaitingPaymentMethod,
                    0,
                    Some(after(wait)),
                    Some(&err.to_string()),
                )
                .await?
                {
                    queue_mail(&mut tx, a, Template::UnderpaidUpdateCard, None, ask_links).await?;
                }
            } else {
                // The method the customer gave failed: forget it, keep waiting.
                store::set_new_method(&mut tx, a.id, None).await?;
                store::transition(
                    &mut tx,
                    a.id,
                    a.state,
                    a.state,
                    a.reminders_sent,
                    a.next_action_at,
                    Some(&err.to_string()),
                )
                .await?;
            }
            Charged::Refused
        }
    };
    tx.commit().await?;
    Ok(outcome)
}

pub(super) enum CarriedOut {
    Done,
    Retry,
}

pub(super) async fn carry_out(
    db: &MerchantDb,
    provider: &dyn PaymentProvider,
    options: &SettleOptions,
    a: &AdjustmentRow,
    choice: Choice,
) -> Result<CarriedOut, RemediationError> {
    let merchant = db.merchant();
    let owed = -a.delta;
    match choice {
        Choice::Refund => {
            let key = effect_key(a.id, "refund");
            let mut tx = db.begin().await?;
            store::begin_effect(&mut tx, &key, a.id, "refund", owed).await?;
            tx.commit().await?;
            let result = match a.payment_reference {
                Some(payment) => provider.refund_amount(merchant, payment, owed, &key).await,
                None => Err(PaymentError::NotFound(Uuid::nil())),
            };
            let mut tx = db.begin().await?;
            let outcome = match result {
                Ok(()) => {
                    store::finish_effect(&mut tx, &key, true, "refunded").await?;
                    if mark_settled(&mut tx, a, State::ChoiceMade).await? {
                        queue_mail(&mut tx, a, Template::RefundDone, None, Vec::new()).await?;
                        settled_event(&mut tx, a, "refunded", owed).await?;
                    }
                    CarriedOut::Done
                }
                Err(err) if err.is_retryable() => {
                    store::transition(
                        &mut tx,
                        a.id,
                        State::ChoiceMade,
                        State::ChoiceMade,
                        0,
                        Some(after(options.retry_after)),
                        Some(&err.to_string()),
                    )
                    .await?;
                    CarriedOut::Retry
                }
                Err(err) => {
                    // The provider will not refund: a person takes it from here.
                    store::finish_effect(&mut tx, &key, false, &err.to_string()).await?;
                    store::transition(
                        &mut tx,
                        a.id,
                        State::ChoiceMade,
                        State::Escalated,
                        0,
                        None,
                        Some(&format!("refund refused: {err}")),
                    )
                    .await?;
                    CarriedOut::Done
                }
            };
            tx.commit().await?;
            Ok(outcome)
        }
        Choice::Credit => {
            // The credit, its record and the state change are one transaction.
            let key = effect_key(a.id, "credit");
            let mut tx = db.begin().await?;
            if mark_settled(&mut tx, a, State::ChoiceMade).await? {
                store::begin_effect(&mut tx, &key, a.id, "credit", owed).await?;
                crate::wallet::credit(&mut tx, &a.customer_email, owed, &a.currency, &key).await?;
                store::finish_effect(&mut tx, &key, true, "credited").await?;
                queue_mail(&mut tx, a, Template::CreditDone, None, Vec::new()).await?;
                settled_event(&mut tx, a, "credited", owed).await?;
            }
            tx.commit().await?;
            Ok(CarriedOut::Done)
        }
        Choice::None => {
            let mut tx = db.begin().await?;
            if mark_settled(&mut tx, a, State::ChoiceMade).await? {
                settled_event(&mut tx, a, "declined", 0).await?;
            }
            tx.commit().await?;
            Ok(CarriedOut::Done)
        }
    }
}

pub(super) fn after(wait: Duration) -> DateTime<Utc> {
    Utc::now() + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::days(365))
}

pub(super) async fn queue_mail(
    tx: &mut TenantTx,
    a: &AdjustmentRow,
    template: Template,
    promo: Option<&(String, String)>,
    links: Vec<(&'static str, String)>,
) -> Result<(), RemediationError> {
    let facts = messages::Facts {
        order_id: a.order_id,
        order_date: a.order_placed_at.format("%Y-%m-%d").to_string(),
        charged: a.charged,
        expected: a.expected,
        currency: &a.currency,
        promo_code: promo.map(|(code, _)| code.as_str()),
        promo_terms: promo.map(|(_, terms)| terms.clone()),
        links,
    };
    let key = effect_key(a.id, &template.step());
    let mail = messages::render(template, key, &a.customer_email, &facts);
    crate::mail::enqueue(tx, &mail).await?;
    Ok(())
}

/// Moves `a` from `from` to settled; `false` when another run got there first
/// (then the caller queues no mail and emits no event: they were the winner's).
pub(super) async fn mark_settled(
    tx: &mut TenantTx,
    a: &AdjustmentRow,
    from: State,
) -> Result<bool, sqlx::Error> {
    store::transition(tx, a.id, from, State::Settled, a.reminders_sent, None, None).await
}

pub(super) async fn settled_event(
    tx: &mut TenantTx,
    a: &AdjustmentRow,
    outcome: &str,
    amount: i64,
) -> Result<(), sqlx::Error> {
    crate::events::emit(
        tx,
        EventType::AdjustmentSettled,
        serde_json::json!({
            "adjustment_id": a.id,
            "incident_id": a.incident_id,
            "order_id": a.order_id,
            "outcome": outcome,
            "amount": {"amount": amount, "currency": a.currency},
        }),
    )
    .await
    .map(|_| ())
}
