//! The dashboard: server-rendered HTML pages (askama templates in `control-plane/templates/`, checked at compile
//! time and escaped by default), SVG charts drawn by the plane (`chart.rs`), one stylesheet and one small script
//! (`control-plane/static/`), served on the API port under `/`.
//!
//! Every page has a stable URL carrying its query and time range. Users log in with a password (`auth.rs`); a
//! session cookie (HttpOnly, SameSite=Lax, Secure over TLS) names a row of the `sessions` table, and every form
//! carries the session's CSRF token. Every response of the port (API included) carries a strict
//! Content-Security-Policy (scripts and styles only from `/static/`: no inline script or style),
//! `X-Content-Type-Options`, `Referrer-Policy` and frame denial ([`security_headers`]).

mod auth;
mod boards;
mod chart;
mod deploys;
mod explore;
mod format;
mod logs;
mod map;
mod nodes;
mod overview;
mod service;
mod traces;
mod users;

use std::time::Duration;

use askama::Template;
use axum::Router;
use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use gantry_proto::Access;
use subtle::ConstantTimeEq;

use crate::api::{ApiError, AppState};
use crate::state::users::Session;

pub use auth::LoginLimiter;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "gantry_session";

/// The whole HTTP application of the API port: the dashboard's pages, the API, OTLP/HTTP, health and `/metrics`,
/// every response with the security headers.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/", get(overview::page))
        .route("/login", get(auth::form).post(auth::login))
        .route("/logout", post(auth::logout))
        .route("/static/{file}", get(asset))
        .route("/services/{name}", get(service::page))
        .route("/logs", get(logs::page))
        .route("/logs/tail", get(logs::tail))
        .route("/traces", get(traces::search))
        .route("/traces/{trace_id}", get(traces::view))
        .route("/map", get(map::page))
        .route("/explore", get(explore::page))
        .route("/dashboards", get(boards::list))
        .route("/dashboards/{name}", get(boards::page))
        .route("/deploys", get(deploys::list))
        .route("/deploys/{id}", get(deploys::page))
        .route("/deploys/{id}/{action}", post(deploys::act))
        .route("/services/{name}/rollback", post(deploys::rollback))
        .route("/nodes", get(nodes::page))
        .route("/nodes/{agent_id}/{action}", post(nodes::act))
        .route("/admin", get(users::page))
        .route("/admin/users", post(users::create_user))
        .route("/admin/users/{name}/delete", post(users::delete_user))
        .route("/admin/tokens", post(users::create_token))
        .route("/admin/tokens/{id}/revoke", post(users::revoke_token))
        .route("/audit", get(users::audit))
        .with_state(state.clone())
        .merge(crate::api::app(state))
        .layer(axum::middleware::map_response(security_headers))
}

/// The Content-Security-Policy of every response: nothing inline, nothing from elsewhere, no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Adds the security headers to a response (OWASP Secure Headers Project); HTML is never cached.
pub async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    let html = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/html"));
    if html {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// `GET /static/{file}`: the stylesheet and the script, compiled into the binary.
async fn asset(Path(file): Path<String>) -> Response {
    let (body, content_type) = match file.as_str() {
        "app.css" => (
            include_str!("../../static/app.css"),
            "text/css; charset=utf-8",
        ),
        "app.js" => (
            include_str!("../../static/app.js"),
            "text/javascript; charset=utf-8",
        ),
        _ => return (StatusCode::NOT_FOUND, "no such file").into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        body,
    )
        .into_response()
}

/// The logged-in user of a page, from the session cookie; without a live session the browser is sent to the login
/// page, which brings it back here.
pub struct Viewer {
    /// The session.
    pub session: Session,
    /// Whether the browser reached the plane over TLS (see [`over_tls`]).
    pub secure: bool,
}

impl Viewer {
    /// Whether the user's role allows `access`.
    pub fn may(&self, access: Access) -> bool {
        self.session.user.role.allows(access)
    }

    /// The page frame: who is logged in, the form token, the active section.
    pub fn layout(&self, section: &'static str, title: String) -> Layout {
        Layout {
            user: self.session.user.name.clone(),
            role: self.session.user.role.as_str(),
            csrf: self.session.csrf.clone(),
            section,
            title,
            may_deploy: self.may(Access::Deploy),
            is_admin: self.may(Access::Admin),
        }
    }

    /// Refuses a form whose CSRF token is not the session's (compared in constant time), and a role that may not
    /// do `access`.
    ///
    /// # Errors
    /// [`UiError::Forbidden`] either way.
    pub fn check(&self, csrf: &str, access: Access) -> Result<(), UiError> {
        let valid: bool = csrf.as_bytes().ct_eq(self.session.csrf.as_bytes()).into();
        if !valid {
            return Err(UiError::Forbidden(
                "this form's CSRF token is missing or stale: reload the page and try again".into(),
            ));
        }
        if !self.may(access) {
            return Err(UiError::Forbidden(format!(
                "a `{}` may not do this",
                self.session.user.role
            )));
        }
        Ok(())
    }
}

/// Whether the browser reached the plane over TLS: the plane itself serves plain HTTP today, so this is a
/// TLS-terminating proxy's `X-Forwarded-Proto: https` or `Forwarded: proto=https` (RFC 7239). It only decides the
/// cookies' `Secure` flag, which a forged header can only make stricter.
pub fn over_tls(headers: &axum::http::HeaderMap) -> bool {
    let forwarded_proto = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .next()
                .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"))
        });
    let forwarded = headers
        .get(header::FORWARDED)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split([';', ','])
                .any(|pair| pair.trim().eq_ignore_ascii_case("proto=https"))
        });
    forwarded_proto || forwarded
}

/// A form that carries only the session's CSRF token (an action button).
#[derive(serde::Deserialize)]
pub struct CsrfForm {
    /// The session's CSRF token, as the page rendered it.
    pub csrf: String,
}

/// The value of the cookie `name` a request carries.
pub fn cookie_value(headers: &axum::http::HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(cookie::Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == name)
        .map(|c| c.value().to_owned())
}

impl FromRequestParts<AppState> for Viewer {
    type Rejection = UiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        // After the login the browser GETs `next`: for a form's POST that is no page, so it goes to the overview.
        let next = if parts.method == axum::http::Method::GET {
            parts
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_owned()
        } else {
            "/".to_owned()
        };
        let Some(secret) = cookie_value(&parts.headers, SESSION_COOKIE) else {
            return Err(UiError::Login { next });
        };
        let users = state.users.clone();
        let session = tokio::task::spawn_blocking(move || users.session(&secret))
            .await
            .map_err(|error| UiError::Internal(error.to_string()))?
            .map_err(|error| UiError::Unavailable(error.to_string()))?;
        match session {
            Some(session) => Ok(Viewer {
                session,
                secure: over_tls(&parts.headers),
            }),
            None => Err(UiError::Login { next }),
        }
    }
}

/// What every page's frame shows (no `Debug`: it holds the session's CSRF token).
#[derive(Clone)]
pub struct Layout {
    /// The user's name.
    pub user: String,
    /// The user's role.
    pub role: &'static str,
    /// The session's CSRF token, for forms.
    pub csrf: String,
    /// The navigation entry to highlight.
    pub section: &'static str,
    /// The page's title.
    pub title: String,
    /// Whether deploy actions are shown.
    pub may_deploy: bool,
    /// Whether admin actions are shown.
    pub is_admin: bool,
}

/// A page that could not be shown.
#[derive(Debug, thiserror::Error)]
pub enum UiError {
    /// No live session: to the login page, then back to `next`.
    #[error("log in first")]
    Login {
        /// Where to return.
        next: String,
    },
    /// A bad parameter (400).
    #[error("{0}")]
    BadRequest(String),
    /// Not allowed (403).
    #[error("{0}")]
    Forbidden(String),
    /// Nothing there (404).
    #[error("{0}")]
    NotFound(String),
    /// Refused by the state (409).
    #[error("{0}")]
    Conflict(String),
    /// Too many attempts (429).
    #[error("{message}")]
    TooMany {
        /// What to do.
        message: String,
        /// When to retry.
        retry_after: Duration,
    },
    /// Busy or failing for now (503).
    #[error("{0}")]
    Unavailable(String),
    /// Our failure (500).
    #[error("{0}")]
    Internal(String),
}

impl From<ApiError> for UiError {
    fn from(error: ApiError) -> Self {
        match error {
            ApiError::BadRequest(_)
            | ApiError::BadQuery { .. }
            | ApiError::Spec(_)
            | ApiError::TooExpensive { .. } => UiError::BadRequest(error.to_string()),
            ApiError::Auth(_) | ApiError::Forbidden(_) => UiError::Forbidden(error.to_string()),
            ApiError::NotFound(message) => UiError::NotFound(message),
            ApiError::Conflict(message) => UiError::Conflict(message),
            ApiError::TooManyRequests {
                message,
                retry_after,
            } => UiError::TooMany {
                message,
                retry_after,
            },
            ApiError::Unavailable { message, .. } => UiError::Unavailable(message),
            ApiError::Internal(message) => UiError::Internal(message),
        }
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    status: u16,
    reason: &'static str,
    message: String,
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let status = match &self {
            UiError::Login { next } => {
                let target =
                    serde_urlencoded::to_string([("next", next.as_str())]).unwrap_or_default();
                return Redirect::to(&format!("/login?{target}")).into_response();
            }
            UiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            UiError::Forbidden(_) => StatusCode::FORBIDDEN,
            UiError::NotFound(_) => StatusCode::NOT_FOUND,
            UiError::Conflict(_) => StatusCode::CONFLICT,
            UiError::TooMany { .. } => StatusCode::TOO_MANY_REQUESTS,
            UiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            UiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        // Our own failures are logged in full and shown in general terms.
        let message = match &self {
            UiError::Internal(message) => {
                tracing::error!(error = %message, "page failed");
                "the plane failed to answer this page; its log has the details".to_owned()
            }
            UiError::Unavailable(message) => {
                tracing::warn!(error = %message, "page unavailable");
                "the plane is busy: try again in a moment".to_owned()
            }
            other => other.to_string(),
        };
        let page = ErrorPage {
            status: status.as_u16(),
            reason: status.canonical_reason().unwrap_or(""),
            message,
        };
        let mut response = (status, html(&page)).into_response();
        match self {
            UiError::TooMany { retry_after, .. } => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, retry_after.as_secs().max(1).into());
            }
            UiError::Unavailable(_) => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        response
    }
}

/// A rendered template as an HTML response (a render failure, which askama's checks leave only for a failing
/// `Display`, is a 500).
pub fn html(template: &impl Template) -> Response {
    match template.render() {
        Ok(body) => ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response(),
        Err(error) => {
            tracing::error!(%error, "template failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page failed to render",
            )
                .into_response()
        }
    }
}

/// Runs a blocking state read or write for a page.
///
/// # Errors
/// The work's error as a page error.
pub async fn blocking<S, T, E>(
    store: &S,
    work: impl FnOnce(&S) -> Result<T, E> + Send + 'static,
) -> Result<T, UiError>
where
    S: Clone + Send + 'static,
    T: Send + 'static,
    E: Into<ApiError> + Send + 'static,
{
    crate::api::blocking(store, work)
        .await
        .map_err(UiError::from)
}

/// The time range of a page: `from` and `to` as the API takes them (RFC 3339, `-1h`, `now`, Unix ms), with the
/// page's default look-back.
#[derive(Debug, Clone)]
pub struct Range {
    /// As given (or the default), for links and the picker.
    pub from: String,
    /// As given (or `now`).
    pub to: String,
    /// Resolved.
    pub range: gantry_store::TimeRange,
}

impl Range {
    /// Resolves `from`/`to`, `default_from` when `from` is absent.
    ///
    /// # Errors
    /// [`UiError::BadRequest`] naming the parameter.
    pub fn parse(
        from: Option<&str>,
        to: Option<&str>,
        default_from: &str,
    ) -> Result<Range, UiError> {
        let from = from
            .filter(|f| !f.trim().is_empty())
            .unwrap_or(default_from)
            .trim()
            .to_owned();
        let to = to
            .filter(|t| !t.trim().is_empty())
            .unwrap_or("now")
            .trim()
            .to_owned();
        let range = crate::api::time::parse_range(Some(&from), Some(&to))?;
        Ok(Range { from, to, range })
    }

    /// `from=..&to=..`, URL-encoded, for links.
    pub fn query(&self) -> String {
        serde_urlencoded::to_string([("from", &self.from), ("to", &self.to)]).unwrap_or_default()
    }

    /// The picker of this range, keeping `hidden` parameters (a query, a filter) on the same page.
    pub fn picker(&self, hidden: &[(&str, &str)]) -> RangePicker {
        RangePicker {
            presets: self.presets(),
            range: self.clone(),
            hidden: hidden
                .iter()
                .filter(|(_, value)| !value.is_empty())
                .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
                .collect(),
        }
    }

    /// The choices of the range picker: (label, `from`), with the current one marked.
    pub fn presets(&self) -> Vec<(&'static str, &'static str, bool)> {
        ["-15m", "-1h", "-6h", "-24h", "-7d"]
            .into_iter()
            .zip(["15 min", "1 hour", "6 hours", "24 hours", "7 days"])
            .map(|(from, label)| (label, from, self.from == from && self.to == "now"))
            .collect()
    }
}

/// The time range picker of a page: absolute or relative `from`/`to` fields and presets, each a link that keeps the
/// page's other parameters.
#[derive(Debug, Clone, Template)]
#[template(path = "_range.html")]
pub struct RangePicker {
    range: Range,
    presets: Vec<(&'static str, &'static str, bool)>,
    hidden: Vec<(String, String)>,
}

impl RangePicker {
    /// The query string of a preset: the kept parameters and `from`, up to now.
    pub fn preset_query(&self, from: &str) -> String {
        let mut pairs: Vec<(&str, &str)> = self
            .hidden
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        pairs.push(("from", from));
        pairs.push(("to", "now"));
        serde_urlencoded::to_string(pairs).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_is_read_from_the_proxys_headers() {
        let with = |name: &'static str, value: &'static str| {
            let mut headers = axum::http::HeaderMap::new();
            headers.insert(name, HeaderValue::from_static(value));
            over_tls(&headers)
        };
        assert!(with("x-forwarded-proto", "https"));
        assert!(with("x-forwarded-proto", "HTTPS, http"));
        assert!(!with("x-forwarded-proto", "http"));
        assert!(with("forwarded", "for=10.0.0.1;proto=https;by=10.0.0.2"));
        assert!(!with("forwarded", "for=10.0.0.1;proto=http"));
        assert!(!over_tls(&axum::http::HeaderMap::new()));
    }
}
