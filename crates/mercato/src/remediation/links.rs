//! The customers' signed links: an overpaid customer's choice, an underpaid
//! customer's new payment method, each applied once.

use chrono::Utc;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::effects::{carry_out, charge, customer_charge_step, Charged};
use super::model::{self, *};
use super::store::{self, AdjustmentRow};
use super::{RemediationError, SettleOptions};
use crate::cells::MerchantDb;
use crate::db::{MerchantId, TenantTx};
use crate::payments::PaymentProvider;

/// Why a customer's link is refused.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("this adjustment is not waiting for that (it is {0})")]
    NotWaiting(State),
    #[error("a different choice was made already: {0}")]
    ChoiceTaken(Choice),
    #[error("a payment with another method is under way for this adjustment")]
    InProgress,
    #[error("the payment method was refused: {0}")]
    Refused(String),
    #[error(transparent)]
    Remediation(#[from] RemediationError),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// What the customer's link did.
#[derive(Debug, Serialize, ToSchema)]
pub struct LinkOutcome {
    pub adjustment_id: Uuid,
    pub state: State,
    pub choice: Option<Choice>,
    /// `true` when this request found the choice (or the payment) already made.
    pub already_applied: bool,
}

/// Checks a link's token against its adjustment's incident secret, returning the
/// adjustment (locked) and its merchant.
pub(super) async fn open_link(
    db: &MerchantDb,
    token: &str,
    adjustment: Uuid,
    purpose: LinkPurpose,
) -> Result<(TenantTx, AdjustmentRow), LinkError> {
    if link_merchant(token)? != db.merchant() {
        return Err(TokenError::Invalid.into());
    }
    let mut tx = db.begin().await?;
    let a = store::adjustment_for_update(&mut tx, adjustment)
        .await?
        .ok_or(TokenError::Invalid)?;
    let incident = store::incident(&mut tx, a.incident_id)
        .await?
        .ok_or(TokenError::Invalid)?;
    verify_link(
        &incident.link_secret,
        token,
        adjustment,
        purpose,
        Utc::now().timestamp(),
    )?;
    Ok((tx, a))
}

/// The merchant a customer's link names (its signature is checked once its
/// adjustment is read from that merchant's database).
pub fn link_merchant(token: &str) -> Result<MerchantId, LinkError> {
    Ok(MerchantId(model::token_merchant(token)?))
}

/// The overpaid customer's answer, applied once: a repeat of the same choice
/// answers as the first did; another choice is refused.
pub async fn choose(
    db: &MerchantDb,
    provider: &dyn PaymentProvider,
    token: &str,
    adjustment: Uuid,
    choice: Choice,
) -> Result<LinkOutcome, LinkError> {
    let (mut tx, a) = open_link(db, token, adjustment, LinkPurpose::Choice).await?;
    let first = match (a.state, a.choice) {
        (State::AwaitingChoice, None) => store::record_choice(&mut tx, a.id, choice).await?,
        (_, Some(made)) if made == choice => false,
        (_, Some(made)) => return Err(LinkError::ChoiceTaken(made)),
        (state, None) => return Err(LinkError::NotWaiting(state)),
    };
    tx.commit().await?;
    // Recorded now or before; not yet carried out while it is `choice_made`.
    let a = if first {
        AdjustmentRow {
            state: State::ChoiceMade,
            choice: Some(choice),
            ..a
        }
    } else {
        a
    };
    if a.state == State::ChoiceMade {
        // Carried out now; if this fails half-way, settle finishes it under the same key.
        if let Err(err) = carry_out(db, provider, &SettleOptions::default(), &a, choice).await {
            tracing::warn!(error = %err, adjustment = %a.id, "carrying out a choice failed; settle retries it");
        }
    }
    let mut tx = db.begin().await?;
    let a = store::adjustment_for_update(&mut tx, adjustment)
        .await?
        .ok_or(TokenError::Invalid)?;
    tx.commit().await?;
    Ok(LinkOutcome {
        adjustment_id: a.id,
        state: a.state,
        choice: a.choice,
        already_applied: !first,
    })
}

/// The underpaid customer's new payment method, charged once for the difference.
pub async fn give_payment_method(
    db: &MerchantDb,
    provider: &dyn PaymentProvider,
    token: &str,
    adjustment: Uuid,
    method: &str,
) -> Result<LinkOutcome, LinkError> {
    let (mut tx, a) = open_link(db, token, adjustment, LinkPurpose::PaymentMethod).await?;
    match a.state {
        State::Settled => {
            tx.commit().await?;
            return Ok(LinkOutcome {
                adjustment_id: a.id,
                state: a.state,
                choice: None,
                already_applied: true,
            });
        }
        State::AwaitingPaymentMethod | State::Escalated => {}
        state => return Err(LinkError::NotWaiting(state)),
    }
    let step = customer_charge_step(method);
    let key = effect_key(a.id, &step);
    match store::customer_charge(&mut tx, a.id).await? {
        // Another method's charge is under way (or this one's, retried): one at a time.
        Some(other) if other != key => return Err(LinkError::InProgress),
        _ => {}
    }
    // Keyed under the row lock, so two methods given at once cannot both be charged.
    store::begin_effect(&mut tx, &key, a.id, "customer_charge", a.delta).await?;
    store::set_new_method(&mut tx, a.id, Some(method)).await?;
    // An escalated case the customer answers after all goes back to waiting, to be charged.
    store::transition(
        &mut tx,
        a.id,
        a.state,
        State::AwaitingPaymentMethod,
        a.reminders_sent,
        a.next_action_at,
        a.last_error.as_deref(),
    )
    .await?;
    tx.commit().await?;
    let a = AdjustmentRow {
        state: State::AwaitingPaymentMethod,
        new_payment_method: Some(method.to_owned()),
        ..a
    };
    let charged = charge(
        db,
        provider,
        &SettleOptions::default(),
        &a,
        &step,
        method,
        None,
        Vec::new(),
    )
    .await?;
    match charged {
        Charged::Yes | Charged::Retry => Ok(LinkOutcome {
            adjustment_id: a.id,
            state: if matches!(charged, Charged::Yes) {
                State::Settled
            } else {
                State::AwaitingPaymentMethod
            },
            choice: None,
            already_applied: false,
        }),
        Charged::Refused => Err(LinkError::Refused(
            "the payment method could not be charged; nothing was taken: try another".into(),
        )),
    }
}
