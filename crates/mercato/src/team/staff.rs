//! `/v1/staff`: a merchant's people. Owners and admins invite by e-mail
//! (a signed, expiring, single-use link), change roles and remove people;
//! the last owner stays. `/v1/operators`: the platform's people.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::db::{ActorKind, TenantTx};
use crate::http::{ApiError, ApiJson, Problem};
use crate::mail::OutgoingMail;
use crate::state::AppState;
use crate::tenancy::people::{
    self, secrets, store, Email, Invitation, InvitationToken, Role, StaffMember,
};
use crate::tenancy::scopes::Access;
use crate::tenancy::{Admin, Caller, Origin, Tenant};
use crate::validation::FieldErrors;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(post_staff, list_staff))
        .routes(routes!(get_staff, patch_staff, delete_staff))
        .routes(routes!(accept_invitation))
        .routes(routes!(post_operator))
}

/// Whom the caller may manage: a person by their role; a full-access key as
/// an owner (it made the merchant); a scoped key with `staff:write` as an admin.
fn manager_role(tenant: &Tenant) -> Role {
    match &tenant.caller {
        Caller::Person(p) => p.role,
        Caller::Key { .. } if tenant.access == Access::Full => Role::Owner,
        Caller::Key { .. } => Role::Admin,
    }
}

fn parse_role(errors: &mut FieldErrors, raw: &str) -> Option<Role> {
    errors.check("role", Role::parse(raw))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InviteBody {
    pub email: String,
    /// `owner`, `admin`, `staff`, `support` or `viewer`.
    pub role: String,
}

#[derive(Serialize, ToSchema)]
pub struct StaffList {
    /// The people on the staff, oldest first.
    pub data: Vec<StaffMember>,
    /// Invitations sent and not yet accepted (nor expired).
    pub invitations: Vec<Invitation>,
}

/// Invites a person to the staff: an e-mail with a link (valid 7 days, once)
/// to `/console/accept?token=…`; accepting it is `POST /v1/staff/accept`.
/// Owners invite any role, admins any but `owner`.
#[utoipa::path(post, path = "/v1/staff", request_body = InviteBody,
    security(("api_key" = [])),
    responses(
        (status = 201, body = Invitation),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn post_staff(
    tenant: Tenant,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<InviteBody>,
) -> Result<(StatusCode, Json<Invitation>), ApiError> {
    let mut errors = FieldErrors::default();
    let email = errors.check("email", Email::parse(&body.email));
    let role = parse_role(&mut errors, &body.role);
    let (email, role) = errors.finish(email.zip(role))?;
    if !manager_role(&tenant).manages(role) {
        return Err(ApiError::RoleForbids(
            "staff:write (only an owner invites an owner)",
        ));
    }
    let token = InvitationToken::generate(tenant.merchant_id);
    let expires_at = Utc::now() + Duration::days(people::INVITATION_DAYS);
    let mut tx = TenantTx::begin_in_directory(&state.db.app, tenant.merchant_id).await?;
    tx.act_for(&tenant.acting("staff.invite")).await?;
    let already = store::list_staff(&mut tx)
        .await?
        .into_iter()
        .any(|m| m.email == email.as_str());
    if already {
        return Err(ApiError::Conflict {
            kind: "already-staff",
            title: "Already on the staff",
            detail: format!("{} is on this merchant's staff already", email.as_str()),
            errors: vec![crate::validation::FieldError::new(
                "email",
                "is on the staff already",
            )],
        });
    }
    let invitation =
        store::insert_invitation(&mut tx, &email, role, &token.hash(), expires_at).await?;
    let shop = crate::tenancy::merchant_name(&mut tx)
        .await?
        .unwrap_or_else(|| "a shop".to_owned());
    tx.commit().await?;
    queue_invitation(&state, &tenant, &invitation, &token, &shop).await?;
    Ok((StatusCode::CREATED, Json(invitation)))
}

/// Queues the invitation's e-mail in the merchant's outbox (its sender
/// delivers it within a tick).
async fn queue_invitation(
    state: &AppState,
    tenant: &Tenant,
    invitation: &Invitation,
    token: &InvitationToken,
    shop: &str,
) -> Result<(), ApiError> {
    let link = format!("{}/console/accept?token={token}", state.public_url);
    // A key is no one: the shop invites.
    let inviter = match &tenant.caller {
        Caller::Person(p) => p.email.clone(),
        Caller::Key { .. } => shop.to_owned(),
    };
    let paragraphs = vec![
        format!(
            "{inviter} invites you to work on {shop} on Mercato, as {}.",
            invitation.role.as_str()
        ),
        format!(
            "The link works once, until {}. If you did not expect this, ignore it.",
            invitation.expires_at.format("%Y-%m-%d %H:%M UTC")
        ),
    ];
    let (text, html) =
        crate::mail::compose::bodies(&paragraphs, &[("Accept the invitation", link)]);
    let mail = OutgoingMail {
        key: format!("staff-invitation:{}", invitation.id),
        from: None,
        to: invitation.email.clone(),
        subject: format!("You are invited to {shop} on Mercato"),
        text,
        html,
    };
    let mut tx = tenant.begin().await?;
    crate::mail::enqueue(&mut tx, &mail).await?;
    tx.commit().await?;
    Ok(())
}

/// The merchant's people and open invitations.
#[utoipa::path(get, path = "/v1/staff", security(("api_key" = [])),
    responses(
        (status = 200, body = StaffList),
        (status = 403, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_staff(
    tenant: Tenant,
    State(state): State<AppState>,
) -> Result<Json<StaffList>, ApiError> {
    let mut tx = TenantTx::begin_in_directory(&state.db.app, tenant.merchant_id).await?;
    let data = store::list_staff(&mut tx).await?;
    let invitations = store::open_invitations(&mut tx).await?;
    tx.commit().await?;
    Ok(Json(StaffList { data, invitations }))
}

/// One of the merchant's people.
#[utoipa::path(get, path = "/v1/staff/{id}", params(("id" = String, Path)),
    security(("api_key" = [])),
    responses(
        (status = 200, body = StaffMember),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_staff(
    tenant: Tenant,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<StaffMember>, ApiError> {
    let id = ApiError::path_id(&id, "staff member")?;
    let mut tx = TenantTx::begin_in_directory(&state.db.app, tenant.merchant_id).await?;
    let member = store::staff_member_for_update(&mut tx, id)
        .await?
        .ok_or(ApiError::NotFound("staff member"))?;
    tx.commit().await?;
    Ok(Json(member))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchStaffBody {
    /// The new role.
    pub role: String,
}

fn last_owner() -> ApiError {
    ApiError::Conflict {
        kind: "last-owner",
        title: "Last owner",
        detail: "a merchant keeps at least one owner: make another owner first".to_owned(),
        errors: vec![crate::validation::FieldError::new(
            "role",
            "is the last owner's",
        )],
    }
}

/// Changes a person's role. Owners change anyone's; admins anyone's but an
/// owner's, and never to `owner`. The last owner stays an owner (409).
#[utoipa::path(patch, path = "/v1/staff/{id}", params(("id" = String, Path)),
    request_body = PatchStaffBody, security(("api_key" = [])),
    responses(
        (status = 200, body = StaffMember),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn patch_staff(
    tenant: Tenant,
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<PatchStaffBody>,
) -> Result<Json<StaffMember>, ApiError> {
    let id = ApiError::path_id(&id, "staff member")?;
    let mut errors = FieldErrors::default();
    let role = parse_role(&mut errors, &body.role);
    let role = errors.finish(role)?;
    let manager = manager_role(&tenant);
    let mut tx = TenantTx::begin_in_directory(&state.db.app, tenant.merchant_id).await?;
    tx.act_for(&tenant.acting("staff.update")).await?;
    let owners = store::owners_for_update(&mut tx).await?;
    let mut member = store::staff_member_for_update(&mut tx, id)
        .await?
        .ok_or(ApiError::NotFound("staff member"))?;
    if !manager.manages(member.role) || !manager.manages(role) {
        return Err(ApiError::RoleForbids(
            "staff:write (only an owner changes an owner or makes one)",
        ));
    }
    if member.role == Role::Owner && role != Role::Owner && owners.len() <= 1 {
        return Err(last_owner());
    }
    store::set_role(&mut tx, id, role).await?;
    tx.commit().await?;
    member.role = role;
    Ok(Json(member))
}

/// Removes a person from the staff: their sessions end at once. The last
/// owner stays (409).
#[utoipa::path(delete, path = "/v1/staff/{id}", params(("id" = String, Path)),
    security(("api_key" = [])),
    responses(
        (status = 204, description = "removed"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn delete_staff(
    tenant: Tenant,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = ApiError::path_id(&id, "staff member")?;
    let mut tx = TenantTx::begin_in_directory(&state.db.app, tenant.merchant_id).await?;
    tx.act_for(&tenant.acting("staff.remove")).await?;
    let owners = store::owners_for_update(&mut tx).await?;
    let member = store::staff_member_for_update(&mut tx, id)
        .await?
        .ok_or(ApiError::NotFound("staff member"))?;
    if !manager_role(&tenant).manages(member.role) {
        return Err(ApiError::RoleForbids(
            "staff:write (only an owner removes an owner)",
        ));
    }
    if member.role == Role::Owner && owners.len() <= 1 {
        return Err(last_owner());
    }
    store::delete_staff(&mut tx, id).await?;
    tx.commit().await?;
    // Their sessions would be refused anyway (no role here); ended for good.
    people::end_sessions_of(&state.db.app, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AcceptBody {
    /// The `token` parameter of the invitation link.
    pub token: String,
    /// The password to log in with (at least 10 characters, not a common
    /// one); a person who has a login already gives theirs.
    pub password: String,
}

#[derive(Serialize, ToSchema)]
pub struct Joined {
    pub person_id: Uuid,
    pub email: String,
    pub merchant_id: Uuid,
    #[schema(value_type = String)]
    pub role: Role,
}

/// Accepts an invitation: makes the person (or, with the password of their
/// existing login, adds them) and puts them on the staff. A link works once
/// (409 `invitation-used`) and until it expires (410).
#[utoipa::path(post, path = "/v1/staff/accept", request_body = AcceptBody, security(),
    responses(
        (status = 201, body = Joined),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json"),
        (status = 410, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
        (status = 429, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn accept_invitation(
    State(state): State<AppState>,
    extensions: axum::http::Extensions,
    headers: axum::http::HeaderMap,
    ApiJson(body): ApiJson<AcceptBody>,
) -> Result<(StatusCode, Json<Joined>), ApiError> {
    let token =
        InvitationToken::parse(body.token.trim()).ok_or(ApiError::NotFound("invitation"))?;
    let mut tx = TenantTx::begin_in_directory(&state.db.app, token.merchant_id).await?;
    let invitation = store::invitation_for_update(&mut tx, &token.hash())
        .await?
        .ok_or(ApiError::NotFound("invitation"))?;
    if invitation.used {
        return Err(ApiError::Conflict {
            kind: "invitation-used",
            title: "Invitation used",
            detail: "this invitation was accepted (or replaced by a newer one): log in, or ask for a new one".to_owned(),
            errors: vec![crate::validation::FieldError::new("token", "was used")],
        });
    }
    if invitation.expired {
        return Err(ApiError::Gone(
            "this invitation has expired: ask for a new one",
        ));
    }
    let email = Email::parse(&invitation.email).map_err(|_| ApiError::NotFound("invitation"))?;
    let existing = store::person_by_email(&state.db.app, &email).await?;
    let address = crate::tenancy::client_address(&extensions);
    let person = match existing {
        Some(person) => {
            // A password guessed here counts as at a login.
            state
                .logins
                .check(email.as_str(), address)
                .map_err(|retry_after| ApiError::LoginThrottled { retry_after })?;
            if !secrets::verify_password_off_thread(body.password, Some(person.password_hash)).await
            {
                state.logins.failed(email.as_str(), address);
                return Err(ApiError::field(
                    "password",
                    "you have a login already: give its password",
                ));
            }
            person.id
        }
        None => {
            people::check_password(&body.password, &email)
                .map_err(|m| ApiError::field("password", m))?;
            let hash = secrets::hash_password_off_thread(body.password).await;
            store::insert_person(tx.conn(), &email, &hash, false)
                .await?
                .ok_or(ApiError::Unavailable(
                    "this address was just registered; retry",
                ))?
        }
    };
    let origin = Origin::of(&headers, address);
    tx.act_for(&origin.acting("staff.join", ActorKind::Person, email.as_str()))
        .await?;
    store::insert_staff(&mut tx, person, invitation.role).await?;
    store::mark_invitation_accepted(&mut tx, invitation.id).await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(Joined {
            person_id: person,
            email: email.as_str().to_owned(),
            merchant_id: token.merchant_id.0,
            role: invitation.role,
        }),
    ))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OperatorBody {
    pub email: String,
    /// Their password (policy as for staff); ignored for a person who has a login.
    pub password: String,
}

#[derive(Serialize, ToSchema)]
pub struct OperatorView {
    pub id: Uuid,
    pub email: String,
    /// `false`: the person had a login already and is now an operator too.
    pub created: bool,
    pub created_at: DateTime<Utc>,
}

/// Makes a platform operator (the admin token makes the first; then
/// operators make each other, and `--admin-token off` retires the token).
#[utoipa::path(post, path = "/v1/operators", request_body = OperatorBody,
    security(("admin_token" = [])),
    responses(
        (status = 201, body = OperatorView),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn post_operator(
    _admin: Admin,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<OperatorBody>,
) -> Result<(StatusCode, Json<OperatorView>), ApiError> {
    let email = Email::parse(&body.email).map_err(|m| ApiError::field("email", m))?;
    people::check_password(&body.password, &email).map_err(|m| ApiError::field("password", m))?;
    let hash = secrets::hash_password_off_thread(body.password).await;
    let (id, created) = store::make_operator(&state.db.app, &email, &hash).await?;
    Ok((
        StatusCode::CREATED,
        Json(OperatorView {
            id,
            email: email.as_str().to_owned(),
            created,
            created_at: Utc::now(),
        }),
    ))
}
