//! The sandbox provider: behaves by payment-method token, like a real
//! provider's test mode, and keeps its state in PostgreSQL (table `payments`)
//! so it survives restarts.

use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;

use super::{
    BoxFuture, ChargeRequest, MethodStatus, Payment, PaymentError, PaymentProvider, PaymentStatus,
};
use crate::db::TenantTx;
use crate::tenancy::MerchantId;

/// The sandbox's test tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxMethod {
    /// `pm_card_ok`: succeeds.
    Ok,
    /// `pm_card_declined`: declined.
    Declined,
    /// `pm_card_expired`: fails as expired.
    Expired,
    /// `pm_card_timeout`: the provider authorizes, but the answer never arrives in time.
    Timeout,
    /// `pm_card_slow`: succeeds after a delay.
    Slow,
    /// `pm_card_no_mandate`: succeeds with the customer present; off-session it
    /// needs authentication (no mandate was given).
    NoMandate,
}

impl SandboxMethod {
    pub fn parse(raw: &str) -> Result<Self, String> {
        Ok(match raw {
            "pm_card_ok" => SandboxMethod::Ok,
            "pm_card_declined" => SandboxMethod::Declined,
            "pm_card_expired" => SandboxMethod::Expired,
            "pm_card_timeout" => SandboxMethod::Timeout,
            "pm_card_slow" => SandboxMethod::Slow,
            "pm_card_no_mandate" => SandboxMethod::NoMandate,
            _ => {
                return Err(
                    "unknown payment method; the sandbox accepts pm_card_ok, pm_card_declined, pm_card_expired, pm_card_timeout, pm_card_slow, pm_card_no_mandate"
                        .into(),
                )
            }
        })
    }
}

pub struct SandboxProvider {
    pool: PgPool,
    /// How long `pm_card_slow` takes, and how long `pm_card_timeout` hangs before giving up.
    delay: Duration,
}

struct PaymentRow {
    id: Uuid,
    status: PaymentStatus,
    amount: i64,
    currency: String,
    failure_code: Option<String>,
}

impl From<PaymentRow> for Payment {
    fn from(r: PaymentRow) -> Self {
        Payment {
            id: r.id,
            status: r.status,
            amount: r.amount,
            currency: r.currency,
            failure_code: r.failure_code,
        }
    }
}

impl SandboxProvider {
    pub fn new(pool: PgPool, delay: Duration) -> Self {
        SandboxProvider { pool, delay }
    }

    /// Records the attempt once per idempotency key; a repeat returns the first outcome.
    async fn attempt(
        &self,
        merchant: MerchantId,
        req: &ChargeRequest,
        capture: bool,
    ) -> Result<Payment, PaymentError> {
        let method = SandboxMethod::parse(&req.payment_method)
            .map_err(|_| PaymentError::UnknownMethod(req.payment_method.clone()))?;
        if method == SandboxMethod::Slow {
            tokio::time::sleep(self.delay).await;
        }
        let (status, failure) = match (method, capture) {
            (SandboxMethod::Declined, _) => (PaymentStatus::Failed, Some("card_declined")),
            (SandboxMethod::Expired, _) => (PaymentStatus::Failed, Some("expired_card")),
            (SandboxMethod::NoMandate, true) => {
                (PaymentStatus::Failed, Some("authentication_required"))
            }
            (_, true) => (PaymentStatus::Captured, None),
            (_, false) => (PaymentStatus::Authorized, None),
        };
        let mut tx = TenantTx::begin(&self.pool, merchant).await?;
        let inserted = sqlx::query_as!(
            PaymentRow,
            r#"insert into payments (merchant_id, id, idempotency_key, payment_method, amount, currency, status, failure_code, off_session)
             values ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             on conflict (merchant_id, idempotency_key) do nothing
             returning id, status as "status: PaymentStatus", amount, currency, failure_code"#,
            merchant.0,
            Uuid::now_v7(),
            req.idempotency_key,
            req.payment_method,
            req.amount,
            req.currency,
            status.as_str(),
            failure,
            capture,
        )
        .fetch_optional(tx.conn())
        .await?;
        // A repeat under the key: the first attempt's outcome.
        let payment: Payment =
            match inserted {
                Some(row) => row,
                None => sqlx::query_as!(
                    PaymentRow,
                    r#"select id, status as "status: PaymentStatus", amount, currency, failure_code
                     from payments where merchant_id = $1 and idempotency_key = $2"#,
                    merchant.0,
                    req.idempotency_key,
                )
                .fetch_one(tx.conn())
                .await?,
            }
            .into();
        tx.commit().await?;
        if method == SandboxMethod::Timeout {
            // The provider did the work; its answer is lost on the way back.
            tokio::time::sleep(self.delay).await;
            return Err(PaymentError::Timeout);
        }
        match payment.failure_code.as_deref() {
            Some("card_declined") => Err(PaymentError::Declined),
            Some("expired_card") => Err(PaymentError::Expired),
            Some("authentication_required") => Err(PaymentError::AuthenticationRequired),
            _ => Ok(payment),
        }
    }

    /// Returns `amount` of a captured payment, once per idempotency key: the
    /// conditional update never lets refunds exceed what was captured.
    async fn refund_part(
        &self,
        merchant: MerchantId,
        payment: Uuid,
        amount: i64,
        idempotency_key: &str,
    ) -> Result<(), PaymentError> {
        let mut tx = TenantTx::begin(&self.pool, merchant).await?;
        let recorded = sqlx::query_scalar!(
            r#"insert into payment_refunds (merchant_id, id, payment_id, idempotency_key, amount)
               values ($1, $2, $3, $4, $5)
               on conflict (merchant_id, idempotency_key) do nothing
               returning 1 as "recorded!""#,
            merchant.0,
            Uuid::now_v7(),
            payment,
            idempotency_key,
            amount,
        )
        .fetch_optional(tx.conn())
        .await?;
        if recorded.is_none() {
            // Refunded before under this key: the same answer again.
            return Ok(());
        }
        let refunded = sqlx::query_scalar!(
            r#"update payments set refunded_amount = refunded_amount + $3, updated_at = now(),
                      status = case when refunded_amount + $3 = amount then 'refunded' else status end
               where merchant_id = $1 and id = $2 and status = 'captured'
                 and refunded_amount + $3 <= amount
               returning 1 as "refunded!""#,
            merchant.0,
            payment,
            amount,
        )
        .fetch_optional(tx.conn())
        .await?;
        if refunded.is_none() {
            let status = sqlx::query_scalar!(
                r#"select status as "status: PaymentStatus" from payments
                   where merchant_id = $1 and id = $2"#,
                merchant.0,
                payment,
            )
            .fetch_optional(tx.conn())
            .await?
            .ok_or(PaymentError::NotFound(payment))?;
            return Err(PaymentError::InvalidState {
                id: payment,
                status,
                action: "refund this much of",
            });
        }
        tx.commit().await?;
        Ok(())
    }

    /// Moves a payment `from` → `to` once; already in `to` is success.
    async fn transition(
        &self,
        merchant: MerchantId,
        id: Uuid,
        from: PaymentStatus,
        to: PaymentStatus,
        action: &'static str,
    ) -> Result<Payment, PaymentError> {
        let mut tx = TenantTx::begin(&self.pool, merchant).await?;
        let moved = sqlx::query_as!(
            PaymentRow,
            r#"update payments set status = $4, updated_at = now(),
                    refunded_amount = case when $4 = 'refunded' then amount else refunded_amount end
             where merchant_id = $1 and id = $2 and status = $3 and refunded_amount = 0
             returning id, status as "status: PaymentStatus", amount, currency, failure_code"#,
            merchant.0,
            id,
            from.as_str(),
            to.as_str(),
        )
        .fetch_optional(tx.conn())
        .await?;
        // Not moved: already there (a repeat), or in a state that refuses it.
        let payment: Option<Payment> = match moved {
            Some(row) => Some(row.into()),
            None => sqlx::query_as!(
                PaymentRow,
                r#"select id, status as "status: PaymentStatus", amount, currency, failure_code
                 from payments where merchant_id = $1 and id = $2"#,
                merchant.0,
                id,
            )
            .fetch_optional(tx.conn())
            .await?
            .map(Into::into),
        };
        tx.commit().await?;
        let payment = payment.ok_or(PaymentError::NotFound(id))?;
        if payment.status == to {
            Ok(payment)
        } else {
            Err(PaymentError::InvalidState {
                id,
                status: payment.status,
                action,
            })
        }
    }
}

impl PaymentProvider for SandboxProvider {
    fn authorize<'a>(
        &'a self,
        merchant: MerchantId,
        req: &'a ChargeRequest,
    ) -> BoxFuture<'a, Result<Payment, PaymentError>> {
        Box::pin(self.attempt(merchant, req, false))
    }

    fn capture(
        &self,
        merchant: MerchantId,
        payment: Uuid,
    ) -> BoxFuture<'_, Result<Payment, PaymentError>> {
        Box::pin(self.transition(
            merchant,
            payment,
            PaymentStatus::Authorized,
            PaymentStatus::Captured,
            "capture",
        ))
    }

    fn void(
        &self,
        merchant: MerchantId,
        payment: Uuid,
    ) -> BoxFuture<'_, Result<Payment, PaymentError>> {
        Box::pin(self.transition(
            merchant,
            payment,
            PaymentStatus::Authorized,
            PaymentStatus::Voided,
            "void",
        ))
    }

    fn refund(
        &self,
        merchant: MerchantId,
        payment: Uuid,
    ) -> BoxFuture<'_, Result<Payment, PaymentError>> {
        Box::pin(self.transition(
            merchant,
            payment,
            PaymentStatus::Captured,
            PaymentStatus::Refunded,
            "refund",
        ))
    }

    fn refund_amount<'a>(
        &'a self,
        merchant: MerchantId,
        payment: Uuid,
        amount: i64,
        idempotency_key: &'a str,
    ) -> BoxFuture<'a, Result<(), PaymentError>> {
        Box::pin(self.refund_part(merchant, payment, amount, idempotency_key))
    }

    fn charge_off_session<'a>(
        &'a self,
        merchant: MerchantId,
        req: &'a ChargeRequest,
    ) -> BoxFuture<'a, Result<Payment, PaymentError>> {
        Box::pin(self.attempt(merchant, req, true))
    }

    fn method_status(&self, payment_method: &str) -> MethodStatus {
        match SandboxMethod::parse(payment_method) {
            Ok(SandboxMethod::Expired) => MethodStatus::Expired,
            Ok(SandboxMethod::Ok | SandboxMethod::Slow | SandboxMethod::Timeout) => {
                MethodStatus::Valid
            }
            _ => MethodStatus::NoMandate,
        }
    }

    fn find<'a>(
        &'a self,
        merchant: MerchantId,
        idempotency_key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Payment>, PaymentError>> {
        Box::pin(async move {
            let mut tx = TenantTx::begin(&self.pool, merchant).await?;
            let payment = sqlx::query_as!(
                PaymentRow,
                r#"select id, status as "status: PaymentStatus", amount, currency, failure_code
                 from payments where merchant_id = $1 and idempotency_key = $2"#,
                merchant.0,
                idempotency_key,
            )
            .fetch_optional(tx.conn())
            .await?;
            tx.commit().await?;
            Ok(payment.map(Into::into))
        })
    }
}
