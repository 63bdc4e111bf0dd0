//! Settling: each adjustment's next step, carried out once (`model::next_step`),
//! with the e-mail it queues and the event it emits.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::effects::{
    after, carry_out, charge, customer_charge_step, queue_mail, CarriedOut, Charged,
};
use super::incident::incident_row;
use super::messages;
use super::model::*;
use super::status::status;
use super::store::{self, AdjustmentRow};
use super::{corrupt, RemediationError, SettleOptions, Template};
use crate::cells::MerchantDb;
use crate::payments::PaymentProvider;

/// Paces provider calls to a rate.
pub(super) struct Pacer {
    every: Duration,
    next: Instant,
}

impl Pacer {
    fn new(rate: f64) -> Pacer {
        Pacer {
            every: Duration::from_secs_f64(1.0 / rate.max(0.001)),
            next: Instant::now(),
        }
    }

    async fn wait(&mut self) {
        let now = Instant::now();
        if self.next > now {
            tokio::time::sleep(self.next - now).await;
        }
        self.next = self.next.max(now) + self.every;
    }
}

/// What one settle run did.
#[derive(Debug, Default, Serialize)]
pub struct SettleSummary {
    pub steps: u64,
    pub charged: u64,
    pub asked_for_payment_method: u64,
    pub reminders: u64,
    pub escalated: u64,
    pub offered_choice: u64,
    pub refunded: u64,
    pub credited: u64,
    pub declined_by_customer: u64,
    pub retry_later: u64,
    pub mails_sent: u64,
    /// Work left for later: reminders not yet due, retries, customers' answers.
    pub waiting: i64,
}

/// Carries out the steps that fit `merchant`'s adjustments (see `model::next_step`).
pub struct Settlement {
    /// The merchant's database (resolved for a job: see `Cells::merchant_db_for_job`).
    pub db: MerchantDb,
    pub provider: Arc<dyn PaymentProvider>,
    pub options: SettleOptions,
}

/// The apology code for an incident (one promo rule, one use per customer).
pub(super) fn apology_code(incident: Uuid) -> (String, String) {
    let short = incident.simple().to_string();
    let tail = &short[short.len() - 8..];
    (
        format!("apology-{tail}"),
        format!("SORRY-{}", tail.to_uppercase()),
    )
}

impl Settlement {
    /// Runs every step due now for incident `id`. Refused until the scan
    /// finished and its report was produced.
    pub async fn run(
        &self,
        id: Uuid,
        mail: &crate::mail::Sender,
        mut progress: impl FnMut(&SettleSummary),
    ) -> Result<SettleSummary, RemediationError> {
        let mut tx = self.db.begin().await?;
        let incident = incident_row(&mut tx, id).await?;
        if incident.scan_finished_at.is_none() {
            return Err(RemediationError::NotScanned(id));
        }
        if !incident.reported() {
            return Err(RemediationError::NotReported(id));
        }
        crate::mail::give_up_interrupted(&mut tx).await?;
        tx.commit().await?;
        let promo = self.ensure_apology_rule(&incident).await?;
        let mut summary = SettleSummary::default();
        let mut pacer = Pacer::new(self.options.provider_rate);
        let mut after = Uuid::nil();
        loop {
            let mut tx = self.db.begin().await?;
            let due = store::due(&mut tx, id, after, 200).await?;
            tx.commit().await?;
            let Some(last) = due.last() else { break };
            after = last.id;
            for adjustment in due {
                self.step(&incident, adjustment, &promo, &mut pacer, &mut summary)
                    .await?;
            }
            summary.mails_sent += mail.send_queued(&self.db, 10_000).await? as u64;
            progress(&summary);
        }
        summary.mails_sent += mail.send_queued(&self.db, 10_000).await? as u64;
        let status = status(&self.db, id).await?;
        summary.waiting = status.waiting_on_customers + status.waiting_to_retry;
        Ok(summary)
    }

    /// The incident's apology rule (created once through the pricing rules):
    /// percent off a next order above a threshold, for the customers charged
    /// the difference, once each. Returns its code and terms.
    async fn ensure_apology_rule(
        &self,
        incident: &store::IncidentRow,
    ) -> Result<(String, String), RemediationError> {
        let (rule_id, code) = apology_code(incident.id);
        let o = &self.options;
        let mut tx = self.db.begin().await?;
        let settings = crate::pricing::settings(&mut tx).await?;
        let terms = format!(
            "{}% off a next order of at least {}, once",
            o.compensation_percent,
            messages::amount(o.compensation_min_subtotal, settings.currency.as_str())
        );
        let current = crate::pricing::current_rules(&mut tx, &settings).await?;
        let exists = current
            .document
            .get("rules")
            .and_then(|r| r.as_array())
            .is_some_and(|rules| rules.iter().any(|r| r["id"] == rule_id.as_str()));
        let emails = store::chargeable_emails(&mut tx, incident.id).await?;
        if exists || emails.is_empty() {
            tx.commit().await?;
            return Ok((code, terms));
        }
        let mut document = current.document.clone();
        let rule = serde_json::json!({
            "id": rule_id,
            "priority": 1,
            "stackable": true,
            "when": {
                "promo_code": code,
                "min_subtotal": {"amount": o.compensation_min_subtotal, "currency": settings.currency.as_str()},
                "customer_email_in": emails,
            },
            "then": {"percent_off": o.compensation_percent},
            "limits": {"uses_per_customer": 1},
        });
        match document.get_mut("rules").and_then(|r| r.as_array_mut()) {
            Some(rules) => rules.push(rule),
            None => document = serde_json::json!({"rules": [rule]}),
        }
        ::pricing::RuleSet::from_value(&document, settings.currency)
            .map_err(|e| corrupt("apology rule", format!("{e:?}")))?;
        crate::pricing::put_rules(&mut tx, &settings, &document, "remediation", true).await?;
        tx.commit().await?;
        Ok((code, terms))
    }

    async fn step(
        &self,
        incident: &store::IncidentRow,
        a: AdjustmentRow,
        promo: &(String, String),
        pacer: &mut Pacer,
        summary: &mut SettleSummary,
    ) -> Result<(), RemediationError> {
        let situation = Situation {
            class: a.class,
            state: a.state,
            method: a.payment_method_status,
            reminders_sent: u32::try_from(a.reminders_sent).unwrap_or(0),
            due: a.next_action_at.is_none_or(|t| t <= Utc::now()),
            choice: a.choice,
            new_method: a.new_payment_method.is_some(),
        };
        let step = next_step(&situation, &self.options.reminders);
        summary.steps += 1;
        let links = |purpose: LinkPurpose| self.links(incident, &a, purpose);
        match step {
            Step::Wait => {}
            Step::Charge => {
                pacer.wait().await;
                let method = a.payment_method.clone();
                let charged = self
                    .charge(
                        &a,
                        "charge",
                        &method,
                        Some(promo),
                        links(LinkPurpose::PaymentMethod),
                    )
                    .await?;
                match charged {
                    Charged::Yes => summary.charged += 1,
                    Charged::Retry => summary.retry_later += 1,
                    Charged::Refused => summary.asked_for_payment_method += 1,
                }
            }
            Step::ChargeNewMethod => {
                pacer.wait().await;
                let method = a.new_payment_method.clone().unwrap_or_default();
                let step = customer_charge_step(&method);
                match self.charge(&a, &step, &method, None, Vec::new()).await? {
                    Charged::Yes => summary.charged += 1,
                    Charged::Retry => summary.retry_later += 1,
                    Charged::Refused => {}
                }
            }
            Step::AskForPaymentMethod => {
                let wait = self.options.reminders.wait_after(0);
                self.move_with_mail(
                    &a,
                    State::AwaitingPaymentMethod,
                    0,
                    Some(after(wait)),
                    None,
                    Some((
                        Template::UnderpaidUpdateCard,
                        links(LinkPurpose::PaymentMethod),
                    )),
                )
                .await?;
                summary.asked_for_payment_method += 1;
            }
            Step::Remind(n) => {
                let wait = self.options.reminders.wait_after(n);
                let mut tx = self.db.begin().await?;
                let sent = i32::try_from(n).unwrap_or(i32::MAX);
                if store::count_reminder(&mut tx, a.id, sent, after(wait)).await? {
                    queue_mail(
                        &mut tx,
                        &a,
                        Template::Reminder(n),
                        None,
                        links(LinkPurpose::PaymentMethod),
                    )
                    .await?;
                    tx.commit().await?;
                    summary.reminders += 1;
                }
            }
            Step::Escalate => {
                self.move_with_mail(
                    &a,
                    State::Escalated,
                    a.reminders_sent,
                    None,
                    Some(
                        a.last_error
                            .as_deref()
                            .unwrap_or("no new payment method after every reminder"),
                    ),
                    None,
                )
                .await?;
                summary.escalated += 1;
            }
            Step::OfferChoice => {
                self.move_with_mail(
                    &a,
                    State::AwaitingChoice,
                    0,
                    None,
                    None,
                    Some((Template::OverpaidChoice, links(LinkPurpose::Choice))),
                )
                .await?;
                summary.offered_choice += 1;
            }
            Step::CarryOut(choice) => {
                if choice == Choice::Refund {
                    pacer.wait().await;
                }
                match self.carry_out(&a, choice).await? {
                    CarriedOut::Done => match choice {
                        Choice::Refund => summary.refunded += 1,
                        Choice::Credit => summary.credited += 1,
                        Choice::None => summary.declined_by_customer += 1,
                    },
                    CarriedOut::Retry => summary.retry_later += 1,
                }
            }
        }
        Ok(())
    }

    /// The links a message carries: one per choice, or the payment-method page.
    fn links(
        &self,
        incident: &store::IncidentRow,
        a: &AdjustmentRow,
        purpose: LinkPurpose,
    ) -> Vec<(&'static str, String)> {
        let expires = Utc::now().timestamp()
            + i64::try_from(self.options.link_ttl.as_secs()).unwrap_or(i64::MAX / 2);
        let token = sign_link(
            &incident.link_secret,
            self.db.merchant().0,
            a.id,
            purpose,
            expires,
        );
        let base = self.options.link_base.trim_end_matches('/');
        match purpose {
            LinkPurpose::Choice => [
                ("Refund it to my payment method", Choice::Refund),
                ("Give me store credit", Choice::Credit),
                ("Keep things as they are", Choice::None),
            ]
            .into_iter()
            .map(|(label, choice)| {
                (
                    label,
                    format!(
                        "{base}/v1/adjustments/{}/choice?token={token}&choice={choice}",
                        a.id
                    ),
                )
            })
            .collect(),
            LinkPurpose::PaymentMethod => vec![(
                "Give a payment method",
                format!(
                    "{base}/v1/adjustments/{}/payment-method?token={token}",
                    a.id
                ),
            )],
        }
    }

    /// Moves `a` to `to` and queues its message, in one transaction.
    async fn move_with_mail(
        &self,
        a: &AdjustmentRow,
        to: State,
        reminders: i32,
        next: Option<DateTime<Utc>>,
        error: Option<&str>,
        mail: Option<(Template, Vec<(&'static str, String)>)>,
    ) -> Result<bool, RemediationError> {
        let mut tx = self.db.begin().await?;
        if !store::transition(&mut tx, a.id, a.state, to, reminders, next, error).await? {
            return Ok(false);
        }
        if let Some((template, links)) = mail {
            queue_mail(&mut tx, a, template, None, links).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Charges the difference to `method` under the adjustment's key for `step`.
    async fn charge(
        &self,
        a: &AdjustmentRow,
        step: &str,
        method: &str,
        promo: Option<&(String, String)>,
        ask_links: Vec<(&'static str, String)>,
    ) -> Result<Charged, RemediationError> {
        charge(
            &self.db,
            self.provider.as_ref(),
            &self.options,
            a,
            step,
            method,
            promo,
            ask_links,
        )
        .await
    }

    async fn carry_out(
        &self,
        a: &AdjustmentRow,
        choice: Choice,
    ) -> Result<CarriedOut, RemediationError> {
        carry_out(&self.db, self.provider.as_ref(), &self.options, a, choice).await
    }
}
