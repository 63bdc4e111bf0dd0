//! Payments: the `PaymentProvider` trait and the built-in sandbox provider.
//!
//! Every call takes an idempotency key (or acts on a payment by id through a
//! state transition that can happen once), so a retried or recovered step never
//! charges, captures or refunds twice.

mod sandbox;

use std::future::Future;
use std::pin::Pin;

use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

pub use sandbox::{SandboxMethod, SandboxProvider};

use crate::db::text_enum;
use crate::tenancy::MerchantId;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

text_enum! {
    /// Where a payment stands at the provider.
    #[derive(Serialize, ToSchema)]
    #[serde(rename_all = "lowercase")]
    pub enum PaymentStatus {
        Authorized = "authorized",
        Captured = "captured",
        Voided = "voided",
        Refunded = "refunded",
        Failed = "failed",
    }
}

text_enum! {
    /// Whether a customer's stored method can be charged without them present.
    #[derive(Serialize, ToSchema)]
    #[serde(rename_all = "snake_case")]
    pub enum MethodStatus {
        /// Valid, with an off-session mandate.
        Valid = "valid",
        /// The card has expired since.
        Expired = "expired",
        /// No mandate for off-session charges: the customer must be asked.
        NoMandate = "no_mandate",
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payment {
    pub id: Uuid,
    pub status: PaymentStatus,
    pub amount: i64,
    pub currency: String,
    /// Why a failed payment failed (`card_declined`, `expired_card`).
    pub failure_code: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ChargeRequest {
    pub idempotency_key: String,
    pub payment_method: String,
    pub amount: i64,
    pub currency: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PaymentError {
    #[error("the card was declined")]
    Declined,
    #[error("the card has expired")]
    Expired,
    /// The bank wants the customer present (3-D Secure): an off-session charge cannot go on.
    #[error("the customer must authenticate this payment")]
    AuthenticationRequired,
    /// The provider refused the call for its own rate limit: try again later.
    #[error("the payment provider rate-limited the call")]
    RateLimited,
    /// The provider did not answer in time: the outcome is unknown until reconciled.
    #[error("the payment provider timed out; outcome unknown")]
    Timeout,
    #[error("unknown payment method {0:?}")]
    UnknownMethod(String),
    #[error("payment {id} is {status:?}; cannot {action}")]
    InvalidState {
        id: Uuid,
        status: PaymentStatus,
        action: &'static str,
    },
    #[error("payment {0} not found")]
    NotFound(Uuid),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

impl PaymentError {
    /// Worth trying again later under the same idempotency key (the outcome is
    /// unknown or the provider was busy); the others are final answers.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            PaymentError::Timeout | PaymentError::RateLimited | PaymentError::Db(_)
        )
    }
}

/// A payment provider as Mercato uses one. Implementations must make every
/// call idempotent (see the module comment).
pub trait PaymentProvider: Send + Sync {
    /// Holds `amount` on the customer's method; `idempotency_key` names the attempt.
    fn authorize<'a>(
        &'a self,
        merchant: MerchantId,
        req: &'a ChargeRequest,
    ) -> BoxFuture<'a, Result<Payment, PaymentError>>;
    /// Takes the held amount. Capturing a captured payment is a no-op.
    fn capture(
        &self,
        merchant: MerchantId,
        payment: Uuid,
    ) -> BoxFuture<'_, Result<Payment, PaymentError>>;
    /// Drops the hold. Voiding a voided payment is a no-op.
    fn void(
        &self,
        merchant: MerchantId,
        payment: Uuid,
    ) -> BoxFuture<'_, Result<Payment, PaymentError>>;
    /// Returns a captured payment in full. Refunding a refunded payment is a no-op.
    fn refund(
        &self,
        merchant: MerchantId,
        payment: Uuid,
    ) -> BoxFuture<'_, Result<Payment, PaymentError>>;
    /// Returns `amount` of a captured payment; the same `idempotency_key` again
    /// changes nothing. Refunds never exceed what was captured.
    fn refund_amount<'a>(
        &'a self,
        merchant: MerchantId,
        payment: Uuid,
        amount: i64,
        idempotency_key: &'a str,
    ) -> BoxFuture<'a, Result<(), PaymentError>>;
    /// Authorizes and captures at once, without the customer present.
    fn charge_off_session<'a>(
        &'a self,
        merchant: MerchantId,
        req: &'a ChargeRequest,
    ) -> BoxFuture<'a, Result<Payment, PaymentError>>;
    /// Whether `payment_method` can be charged off-session now.
    fn method_status(&self, payment_method: &str) -> MethodStatus;
    /// The payment made under `idempotency_key`, if any: how a timed-out call is reconciled.
    fn find<'a>(
        &'a self,
        merchant: MerchantId,
        idempotency_key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Payment>, PaymentError>>;
}
