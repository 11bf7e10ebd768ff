//! `GET /admin` (admins: users and API tokens; a new token is shown once, on the page that created it),
//! `POST /admin/users`, `POST /admin/users/{name}/delete`, `POST /admin/tokens`, `POST /admin/tokens/{id}/revoke`,
//! and `GET /audit` (every change, newest first, for every role). Each change is written to the audit log.

use askama::Template;
use axum::extract::{Form, Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use gantry_proto::platform::AuditEntry;
use gantry_proto::{Access, Role, TokenInfo, UserInfo};
use serde::Deserialize;

use super::{CsrfForm, Layout, UiError, Viewer, blocking, html};
use crate::api::{ApiError, AppState};
use crate::state::audit::Action;
use crate::state::users::UserError;

impl From<UserError> for ApiError {
    fn from(error: UserError) -> Self {
        match error {
            UserError::NameTaken(_) | UserError::LastAdmin(_) => {
                ApiError::Conflict(error.to_string())
            }
            UserError::BadName | UserError::BadRole(_) | UserError::WeakPassword => {
                ApiError::BadRequest(error.to_string())
            }
            UserError::NotFound(_) => ApiError::NotFound(error.to_string()),
            UserError::State(_) => ApiError::Unavailable {
                message: error.to_string(),
                retry_after: std::time::Duration::from_secs(1),
            },
            UserError::Hash(message) => ApiError::Internal(message),
        }
    }
}

#[derive(Template)]
#[template(path = "admin.html")]
struct AdminPage {
    layout: Layout,
    users: Vec<UserInfo>,
    tokens: Vec<TokenInfo>,
    created: Option<(String, String)>,
    message: Option<String>,
}

/// Writes an audit entry of an admin action (on a blocking thread: a committed write); a failure is logged.
async fn record(
    state: &AppState,
    viewer: &Viewer,
    action: &'static str,
    target: &str,
    outcome: &str,
) {
    let actor = viewer.session.actor();
    let (platform, target, outcome) = (
        state.platform.clone(),
        target.to_owned(),
        outcome.to_owned(),
    );
    let written = tokio::task::spawn_blocking(move || {
        platform.record(&Action {
            actor: &actor,
            action,
            target: &target,
            outcome: &outcome,
            detail: "from the dashboard",
        })
    })
    .await;
    if !matches!(written, Ok(Ok(()))) {
        tracing::warn!(action, "the audit entry could not be written");
    }
}

async fn admin_page(
    viewer: &Viewer,
    state: &AppState,
    created: Option<(String, String)>,
    message: Option<String>,
) -> Result<Response, UiError> {
    let users = blocking(&state.users, |users| users.list()).await?;
    let tokens = blocking(&state.tokens, |tokens| tokens.list()).await?;
    let page = AdminPage {
        layout: viewer.layout("admin", "Users and tokens".into()),
        users,
        tokens,
        created,
        message,
    };
    Ok(html(&page))
}

/// `GET /admin`.
pub async fn page(viewer: Viewer, State(state): State<AppState>) -> Result<Response, UiError> {
    if !viewer.may(Access::Admin) {
        return Err(UiError::Forbidden(
            "only admins manage users and tokens".into(),
        ));
    }
    admin_page(&viewer, &state, None, None).await
}

/// The new-user form.
#[derive(Deserialize)]
pub struct UserForm {
    csrf: String,
    name: String,
    role: String,
    password: String,
}

/// `POST /admin/users`.
pub async fn create_user(
    viewer: Viewer,
    State(state): State<AppState>,
    Form(form): Form<UserForm>,
) -> Result<Response, UiError> {
    viewer.check(&form.csrf, Access::Admin)?;
    let role: Role = form.role.parse().map_err(UiError::BadRequest)?;
    let name = form.name.trim().to_owned();
    let (user, password) = (name.clone(), form.password);
    let created = blocking(&state.users, move |users| {
        users.create(&user, role, &password)
    })
    .await;
    let outcome = match &created {
        Ok(_) => "ok".to_owned(),
        Err(error) => format!("refused: {error}"),
    };
    record(&state, &viewer, "user.create", &name, &outcome).await;
    match created {
        Ok(user) => {
            admin_page(
                &viewer,
                &state,
                None,
                Some(format!("Created {} user `{}`.", user.role, user.name)),
            )
            .await
        }
        Err(UiError::BadRequest(message) | UiError::Conflict(message)) => {
            admin_page(&viewer, &state, None, Some(message)).await
        }
        Err(other) => Err(other),
    }
}

/// `POST /admin/users/{name}/delete`.
pub async fn delete_user(
    viewer: Viewer,
    State(state): State<AppState>,
    Path(name): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, UiError> {
    viewer.check(&form.csrf, Access::Admin)?;
    let user = name.clone();
    let deleted = blocking(&state.users, move |users| users.delete(&user)).await;
    record(
        &state,
        &viewer,
        "user.delete",
        &name,
        &match &deleted {
            Ok(_) => "ok".to_owned(),
            Err(error) => format!("refused: {error}"),
        },
    )
    .await;
    match deleted {
        Ok(_) => Ok(Redirect::to("/admin").into_response()),
        Err(UiError::Conflict(message) | UiError::NotFound(message)) => {
            admin_page(&viewer, &state, None, Some(message)).await
        }
        Err(other) => Err(other),
    }
}

/// The new-token form.
#[derive(Deserialize)]
pub struct TokenForm {
    csrf: String,
    name: String,
    role: String,
    /// Comma-separated services a deployer token is limited to; empty for all.
    #[serde(default)]
    services: String,
}

/// `POST /admin/tokens`: the page that answers shows the new token, this once.
pub async fn create_token(
    viewer: Viewer,
    State(state): State<AppState>,
    Form(form): Form<TokenForm>,
) -> Result<Response, UiError> {
    viewer.check(&form.csrf, Access::Admin)?;
    let role: Role = form.role.parse().map_err(UiError::BadRequest)?;
    let services: Vec<String> = form
        .services
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    let name = form.name.trim().to_owned();
    let token_name = name.clone();
    let created = blocking(&state.tokens, move |tokens| {
        tokens.create_limited(&token_name, role, Some(services).filter(|s| !s.is_empty()))
    })
    .await;
    record(
        &state,
        &viewer,
        "token.create",
        &name,
        &match &created {
            Ok(_) => "ok".to_owned(),
            Err(error) => format!("refused: {error}"),
        },
    )
    .await;
    match created {
        Ok(created) => {
            admin_page(
                &viewer,
                &state,
                Some((created.info.name.clone(), created.token)),
                None,
            )
            .await
        }
        Err(UiError::BadRequest(message) | UiError::Conflict(message)) => {
            admin_page(&viewer, &state, None, Some(message)).await
        }
        Err(other) => Err(other),
    }
}

/// `POST /admin/tokens/{id}/revoke`.
pub async fn revoke_token(
    viewer: Viewer,
    State(state): State<AppState>,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, UiError> {
    viewer.check(&form.csrf, Access::Admin)?;
    let token = id.clone();
    match blocking(&state.tokens, move |tokens| tokens.revoke(&token)).await {
        Ok(revoked) => {
            record(&state, &viewer, "token.revoke", &revoked.name, "ok").await;
            Ok(Redirect::to("/admin").into_response())
        }
        Err(error) => {
            record(
                &state,
                &viewer,
                "token.revoke",
                &id,
                &format!("refused: {error}"),
            )
            .await;
            Err(error)
        }
    }
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    layout: Layout,
    target: String,
    entries: Vec<AuditEntry>,
    older: Option<u64>,
}

/// `?target=&before=` of the audit page.
#[derive(Debug, Deserialize)]
pub struct AuditQuery {
    target: Option<String>,
    before: Option<u64>,
}

/// `GET /audit`.
pub async fn audit(
    viewer: Viewer,
    State(state): State<AppState>,
    Query(query): Query<AuditQuery>,
) -> Result<Response, UiError> {
    let target = query.target.unwrap_or_default();
    let filter = Some(target.clone()).filter(|t| !t.is_empty());
    let before = query.before;
    let entries = blocking(&state.platform, move |platform| {
        platform.audit(100, filter.as_deref(), before)
    })
    .await?;
    let older = (entries.len() == 100)
        .then(|| entries.last().map(|e| e.id))
        .flatten();
    let page = AuditPage {
        layout: viewer.layout("audit", "Audit log".into()),
        target,
        entries,
        older,
    };
    Ok(html(&page))
}
