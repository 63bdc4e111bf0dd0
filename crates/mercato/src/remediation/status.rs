//! Where an incident stands: states, money moved, mail, failures.

use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::incident::incident_row;
use super::model::*;
use super::store;
use super::RemediationError;
use crate::cells::MerchantDb;

/// Where an incident stands.
#[derive(Debug, Serialize, ToSchema)]
pub struct Status {
    pub incident: Uuid,
    pub scanned: i64,
    pub scan_finished: bool,
    pub reported: bool,
    /// Adjustments per state and class, with Σ |delta|.
    pub states: Vec<StateCount>,
    /// External effects per step and outcome, with the money.
    pub effects: Vec<EffectCount>,
    pub charged: i64,
    pub refunded: i64,
    pub credited: i64,
    pub waiting_on_customers: i64,
    pub waiting_to_retry: i64,
    pub escalated: i64,
    /// The commonest errors, with how many adjustments last saw each.
    pub failures: Vec<FailureCount>,
    /// Remediation e-mails per status (of all the merchant's incidents).
    pub mail: Vec<MailCount>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StateCount {
    pub state: State,
    pub class: Class,
    pub adjustments: i64,
    pub amount: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EffectCount {
    pub step: String,
    pub status: String,
    pub count: i64,
    pub amount: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FailureCount {
    pub error: String,
    pub adjustments: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MailCount {
    pub status: String,
    pub count: i64,
}

pub async fn status(db: &MerchantDb, id: Uuid) -> Result<Status, RemediationError> {
    let mut tx = db.begin().await?;
    let incident = incident_row(&mut tx, id).await?;
    let tally = store::tally(&mut tx, id).await?;
    // Mail keys start with the adjustment's: the incident's are those of its adjustments.
    let mail_rows = crate::mail::counts(&mut tx, "adj_").await?;
    tx.commit().await?;
    let moved = |step: &str| {
        tally
            .effects
            .iter()
            .filter(|(s, st, _, _)| s == step && st == "succeeded")
            .map(|(_, _, _, amount)| amount)
            .sum::<i64>()
    };
    let in_state = |states: &[State]| {
        tally
            .states
            .iter()
            .filter(|(s, _, _, _)| states.contains(s))
            .map(|(_, _, n, _)| n)
            .sum::<i64>()
    };
    let waiting_to_retry = tally
        .states
        .iter()
        .filter(|(s, c, _, _)| *s == State::Pending && *c != Class::Correct)
        .map(|(_, _, n, _)| n)
        .sum::<i64>();
    Ok(Status {
        incident: id,
        scanned: incident.scanned,
        scan_finished: incident.scan_finished_at.is_some(),
        reported: incident.reported(),
        charged: moved("charge") + moved("customer_charge"),
        refunded: moved("refund"),
        credited: moved("credit"),
        waiting_on_customers: in_state(&[State::AwaitingChoice, State::AwaitingPaymentMethod]),
        waiting_to_retry,
        escalated: in_state(&[State::Escalated]),
        states: tally
            .states
            .into_iter()
            .map(|(state, class, adjustments, amount)| StateCount {
                state,
                class,
                adjustments,
                amount,
            })
            .collect(),
        effects: tally
            .effects
            .into_iter()
            .map(|(step, status, count, amount)| EffectCount {
                step,
                status,
                count,
                amount,
            })
            .collect(),
        failures: tally
            .failures
            .into_iter()
            .map(|(error, adjustments)| FailureCount { error, adjustments })
            .collect(),
        mail: mail_rows
            .into_iter()
            .map(|(status, count)| MailCount {
                status: status.as_str().to_owned(),
                count,
            })
            .collect(),
    })
}
