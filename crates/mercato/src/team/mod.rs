//! The people of a merchant and of the platform, as the API shows them:
//! logging in and out (`sessions`), the staff and their invitations, the
//! operators (`staff`). Who they are, their passwords and sessions are
//! `tenancy::people`'s (authentication needs them); this context adds the
//! routes, the invitation e-mail and the login records of the audit trail.
//! Owns no table.

pub mod sessions;
pub mod staff;

use utoipa_axum::router::OpenApiRouter;

use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(sessions::routes())
        .merge(staff::routes())
}
