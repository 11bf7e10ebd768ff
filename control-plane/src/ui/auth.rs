//! Logging in and out of the dashboard.
//!
//! The login form carries a CSRF token of its own (a random value in a short-lived cookie and in the form: the
//! double-submit pattern), so another site cannot log a browser in as someone else. A successful login always
//! starts a new session (no session fixation); failures are limited per user name and per client address
//! ([`LoginLimiter`]); the page never says whether the name or the password was wrong.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use askama::Template;
use axum::extract::{ConnectInfo, Form, Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Redirect, Response};
use cookie::{Cookie, SameSite};
use rand::RngCore;
use serde::Deserialize;
use subtle::ConstantTimeEq;

use super::{SESSION_COOKIE, UiError, html};
use crate::api::AppState;

/// The login form's own CSRF cookie.
const LOGIN_COOKIE: &str = "gantry_login";

/// Failed logins allowed per user name within [`WINDOW`].
pub const MAX_FAILURES_PER_NAME: usize = 5;
/// Failed logins allowed per client address within [`WINDOW`].
pub const MAX_FAILURES_PER_CLIENT: usize = 20;
/// The window failures are counted over.
pub const WINDOW: Duration = Duration::from_secs(300);
/// Keys remembered at most (a spray of names cannot grow the map without bound: past it, the oldest go).
const MAX_KEYS: usize = 100_000;

/// Failed logins in the last [`WINDOW`], per user name and per client address, in memory (a restart forgets them,
/// which costs an attacker a restart of the plane per few guesses).
#[derive(Debug, Default)]
pub struct LoginLimiter {
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl LoginLimiter {
    /// When a login for `name` from `client` may be tried again, if not now.
    pub fn blocked(&self, name: &str, client: &str) -> Option<Duration> {
        let now = Instant::now();
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let mut wait = None;
        for (key, max) in [
            (format!("name:{name}"), MAX_FAILURES_PER_NAME),
            (format!("client:{client}"), MAX_FAILURES_PER_CLIENT),
        ] {
            if let Some(times) = failures.get_mut(&key) {
                while times
                    .front()
                    .is_some_and(|t| now.duration_since(*t) >= WINDOW)
                {
                    times.pop_front();
                }
                if times.len() >= max
                    && let Some(oldest) = times.front()
                {
                    let left = WINDOW.saturating_sub(now.duration_since(*oldest));
                    wait = Some(wait.map_or(left, |w: Duration| w.max(left)));
                }
            }
        }
        wait
    }

    /// Counts a failed login.
    pub fn failed(&self, name: &str, client: &str) {
        let now = Instant::now();
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if failures.len() >= MAX_KEYS {
            failures.retain(|_, times| {
                times
                    .back()
                    .is_some_and(|t| now.duration_since(*t) < WINDOW)
            });
            if failures.len() >= MAX_KEYS {
                failures.clear();
            }
        }
        for key in [format!("name:{name}"), format!("client:{client}")] {
            failures.entry(key).or_default().push_back(now);
        }
    }

    /// Forgets a name's failures after it logged in.
    pub fn succeeded(&self, name: &str) {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        failures.remove(&format!("name:{name}"));
    }
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    csrf: String,
    next: String,
    name: String,
    error: Option<String>,
}

/// `?next=` of the login page.
#[derive(Debug, Deserialize)]
pub struct NextQuery {
    next: Option<String>,
}

/// Only a path of this site: never another origin (`//evil`, `https://...`), so the login is no open redirect.
fn local_path(next: Option<&str>) -> String {
    match next {
        Some(path)
            if path.starts_with('/')
                && !path.starts_with("//")
                && !path.starts_with("/\\")
                && !path.chars().any(char::is_control) =>
        {
            path.to_owned()
        }
        _ => "/".to_owned(),
    }
}

fn login_page(next: String, name: String, error: Option<String>) -> Response {
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    let csrf = hex::encode(bytes);
    let cookie = Cookie::build((LOGIN_COOKIE, csrf.clone()))
        .path("/login")
        .http_only(true)
        .same_site(SameSite::Strict)
        .max_age(cookie::time::Duration::minutes(30))
        .build();
    let page = LoginPage {
        csrf,
        next,
        name,
        error,
    };
    let mut response = html(&page);
    if let Ok(value) = cookie.to_string().parse() {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

/// `GET /login`.
pub async fn form(Query(query): Query<NextQuery>) -> Response {
    login_page(local_path(query.next.as_deref()), String::new(), None)
}

/// The login form.
#[derive(Deserialize)]
pub struct LoginForm {
    name: String,
    password: String,
    csrf: String,
    next: Option<String>,
}

fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == name)
        .map(|c| c.value().to_owned())
}

/// `POST /login`: a new session and back to `next`, or the form again with a message that does not say which of
/// name or password was wrong.
pub async fn login(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Result<Response, UiError> {
    let next = local_path(form.next.as_deref());
    let expected = cookie_value(&headers, LOGIN_COOKIE).unwrap_or_default();
    let valid = !expected.is_empty() && bool::from(expected.as_bytes().ct_eq(form.csrf.as_bytes()));
    if !valid {
        return Ok(login_page(
            next,
            form.name,
            Some("The login form expired: try again.".to_owned()),
        ));
    }
    let client = peer.ip().to_string();
    let name = form.name.trim().to_owned();
    if let Some(wait) = state.logins.blocked(&name, &client) {
        tracing::warn!(user = %name, %client, "login refused: too many failed attempts");
        return Err(UiError::TooMany {
            message: format!(
                "too many failed logins: try again in {} s",
                wait.as_secs().max(1)
            ),
            retry_after: wait,
        });
    }
    let users = state.users.clone();
    let (checked, password) = (name.clone(), form.password);
    let user = tokio::task::spawn_blocking(move || users.verify(&checked, &password))
        .await
        .map_err(|error| UiError::Internal(error.to_string()))?
        .map_err(|error| UiError::Unavailable(error.to_string()))?;
    let Some(user) = user else {
        state.logins.failed(&name, &client);
        tracing::info!(user = %name, %client, "failed login");
        return Ok(login_page(
            next,
            name,
            Some("Wrong user name or password.".to_owned()),
        ));
    };
    state.logins.succeeded(&name);
    let users = state.users.clone();
    let id = user.id.clone();
    let session = tokio::task::spawn_blocking(move || users.start_session(&id))
        .await
        .map_err(|error| UiError::Internal(error.to_string()))?
        .map_err(|error| UiError::Unavailable(error.to_string()))?;
    tracing::info!(user = %user.name, role = %user.role, %client, "logged in");
    let cookie = Cookie::build((SESSION_COOKIE, session.secret))
        .path("/")
        .http_only(true)
        .same_site(SameSite::Lax)
        .max_age(cookie::time::Duration::seconds(
            crate::state::users::SESSION_TTL.as_secs() as i64,
        ))
        .build();
    let clear_login = Cookie::build((LOGIN_COOKIE, ""))
        .path("/login")
        .max_age(cookie::time::Duration::ZERO)
        .build();
    let mut response = Redirect::to(&next).into_response();
    for cookie in [cookie.to_string(), clear_login.to_string()] {
        if let Ok(value) = cookie.parse() {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
    }
    Ok(response)
}

/// The logout form.
#[derive(Deserialize)]
pub struct LogoutForm {
    csrf: String,
}

/// `POST /logout`: the session ends on the server, the cookie is cleared.
pub async fn logout(
    viewer: super::Viewer,
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<LogoutForm>,
) -> Result<Response, UiError> {
    viewer.check(&form.csrf, gantry_proto::Access::Read)?;
    if let Some(secret) = cookie_value(&headers, SESSION_COOKIE) {
        let users = state.users.clone();
        tokio::task::spawn_blocking(move || users.end_session(&secret))
            .await
            .map_err(|error| UiError::Internal(error.to_string()))?
            .map_err(|error| UiError::Unavailable(error.to_string()))?;
    }
    tracing::info!(user = %viewer.session.user.name, "logged out");
    let clear = Cookie::build((SESSION_COOKIE, ""))
        .path("/")
        .http_only(true)
        .same_site(SameSite::Lax)
        .max_age(cookie::time::Duration::ZERO)
        .build();
    let mut response = Redirect::to("/login").into_response();
    if let Ok(value) = clear.to_string().parse() {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_block_a_name_and_a_client_then_expire_per_name_on_success() {
        let limiter = LoginLimiter::default();
        for _ in 0..MAX_FAILURES_PER_NAME {
            assert!(limiter.blocked("root", "10.0.0.1").is_none());
            limiter.failed("root", "10.0.0.1");
        }
        let wait = limiter
            .blocked("root", "10.0.0.2")
            .expect("the name is blocked");
        assert!(wait <= WINDOW && wait > Duration::from_secs(290));
        assert!(limiter.blocked("other", "10.0.0.2").is_none());
        for i in 0..MAX_FAILURES_PER_CLIENT {
            limiter.failed(&format!("spray{i}"), "10.0.0.3");
        }
        assert!(
            limiter.blocked("fresh", "10.0.0.3").is_some(),
            "the client is blocked"
        );
        limiter.succeeded("root");
        assert!(limiter.blocked("root", "10.0.0.2").is_none());
    }

    #[test]
    fn the_login_redirects_only_within_the_site() {
        assert_eq!(local_path(Some("/logs?q=a")), "/logs?q=a");
        for bad in [
            "//evil.example",
            "https://evil.example",
            "/\\evil",
            "javascript:alert(1)",
            "",
        ] {
            assert_eq!(local_path(Some(bad)), "/", "{bad}");
        }
        assert_eq!(local_path(None), "/");
    }
}
