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

use super::{SESSION_COOKIE, UiError, cookie_value, html};
use crate::api::AppState;

/// The login form's own CSRF cookie.
const LOGIN_COOKIE: &str = "gantry_login";

/// Login attempts allowed per user name from one client within [`WINDOW`].
pub const MAX_ATTEMPTS_PER_NAME_AND_CLIENT: usize = 5;
/// Login attempts allowed per user name from all clients within [`WINDOW`]: looser, so that one attacker cannot
/// lock a user out by guessing wrong on purpose, yet a distributed guessing run stays slow.
pub const MAX_ATTEMPTS_PER_NAME: usize = 50;
/// Login attempts allowed per client address (an IPv6 client by its /64) within [`WINDOW`].
pub const MAX_ATTEMPTS_PER_CLIENT: usize = 20;
/// The window attempts are counted over.
pub const WINDOW: Duration = Duration::from_secs(300);
/// Keys remembered at most: past it, the least recently used that block nobody are forgotten.
const MAX_KEYS: usize = 100_000;
/// Password checks (argon2id: about 19 MiB and tens of ms each) running at once; more wait, briefly.
const CONCURRENT_CHECKS: usize = 2;

/// Login attempts in the last [`WINDOW`], per (name, client), per name and per client, counted when an attempt
/// **starts** (so that parallel attempts cannot slip past the count), and forgotten for the name when it succeeds;
/// and the gate that bounds concurrent password checks. In memory: a restart forgets the counts.
pub struct LoginLimiter {
    attempts: Mutex<HashMap<String, VecDeque<Instant>>>,
    checks: tokio::sync::Semaphore,
}

impl Default for LoginLimiter {
    fn default() -> Self {
        LoginLimiter {
            attempts: Mutex::new(HashMap::new()),
            checks: tokio::sync::Semaphore::new(CONCURRENT_CHECKS),
        }
    }
}

impl std::fmt::Debug for LoginLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The keys are attempted names: not for logs.
        f.debug_struct("LoginLimiter").finish_non_exhaustive()
    }
}

/// The client part of a limiter key: an IPv4 address, or an IPv6 address's /64 (one host owns a whole /64).
pub fn client_key(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

impl LoginLimiter {
    fn keys(name: &str, client: &str) -> [(String, usize); 3] {
        [
            (
                format!("pair:{name}\n{client}"),
                MAX_ATTEMPTS_PER_NAME_AND_CLIENT,
            ),
            (format!("name:{name}"), MAX_ATTEMPTS_PER_NAME),
            (format!("client:{client}"), MAX_ATTEMPTS_PER_CLIENT),
        ]
    }

    /// Starts an attempt: `Err(wait)` when a limit is reached (the attempt is not counted), else the attempt is
    /// counted at once.
    pub fn begin(&self, name: &str, client: &str) -> Result<(), Duration> {
        let now = Instant::now();
        let mut attempts = self.attempts.lock().unwrap_or_else(|p| p.into_inner());
        let keys = Self::keys(name, client);
        let mut wait = None;
        for (key, max) in &keys {
            if let Some(times) = attempts.get_mut(key) {
                while times
                    .front()
                    .is_some_and(|t| now.duration_since(*t) >= WINDOW)
                {
                    times.pop_front();
                }
                if times.len() >= *max
                    && let Some(oldest) = times.front()
                {
                    let left = WINDOW.saturating_sub(now.duration_since(*oldest));
                    wait = Some(wait.map_or(left, |w: Duration| w.max(left)));
                }
            }
        }
        if let Some(wait) = wait {
            return Err(wait);
        }
        if attempts.len() + keys.len() > MAX_KEYS {
            Self::evict(&mut attempts, now);
        }
        for (key, _) in keys {
            attempts.entry(key).or_default().push_back(now);
        }
        Ok(())
    }

    /// Forgets what blocks nobody: expired attempts, then the least recently used keys under their limit.
    fn evict(attempts: &mut HashMap<String, VecDeque<Instant>>, now: Instant) {
        attempts.retain(|_, times| {
            times
                .back()
                .is_some_and(|t| now.duration_since(*t) < WINDOW)
        });
        if attempts.len() * 10 < MAX_KEYS * 9 {
            return;
        }
        let mut idle: Vec<(Instant, String)> = attempts
            .iter()
            .filter(|(_, times)| times.len() < MAX_ATTEMPTS_PER_NAME_AND_CLIENT)
            .filter_map(|(key, times)| Some((*times.back()?, key.clone())))
            .collect();
        idle.sort();
        for (_, key) in idle.into_iter().take(MAX_KEYS / 4) {
            attempts.remove(&key);
        }
    }

    /// Forgets a name's attempts after it logged in (the client's stay counted).
    pub fn succeeded(&self, name: &str, client: &str) {
        let mut attempts = self.attempts.lock().unwrap_or_else(|p| p.into_inner());
        let [(pair, _), (name, _), _] = Self::keys(name, client);
        attempts.remove(&pair);
        attempts.remove(&name);
    }

    /// A permit to check a password, waiting at most 2 s for one.
    ///
    /// # Errors
    /// [`UiError::Unavailable`] when none came free (the answer carries `Retry-After`).
    pub async fn check_permit(&self) -> Result<tokio::sync::SemaphorePermit<'_>, UiError> {
        tokio::time::timeout(Duration::from_secs(2), self.checks.acquire())
            .await
            .ok()
            .and_then(Result::ok)
            .ok_or_else(|| {
                UiError::Unavailable("too many logins at once: try again in a second".into())
            })
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

fn login_page(next: String, name: String, error: Option<String>, secure: bool) -> Response {
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    let csrf = hex::encode(bytes);
    let cookie = Cookie::build((LOGIN_COOKIE, csrf.clone()))
        .path("/login")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(secure)
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
pub async fn form(headers: HeaderMap, Query(query): Query<NextQuery>) -> Response {
    login_page(
        local_path(query.next.as_deref()),
        String::new(),
        None,
        super::over_tls(&headers),
    )
}

/// The login form.
#[derive(Deserialize)]
pub struct LoginForm {
    name: String,
    password: String,
    csrf: String,
    next: Option<String>,
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
            super::over_tls(&headers),
        ));
    }
    let client = client_key(peer.ip());
    let name = form.name.trim().to_owned();
    // A name that cannot exist is a failure without a password check (it still counts for the client).
    let valid_name = crate::state::users::valid_name(&name);
    let counted = if valid_name { name.as_str() } else { "" };
    if let Err(wait) = state.logins.begin(counted, &client) {
        tracing::warn!(user = ?counted, %client, "login refused: too many attempts");
        return Err(UiError::TooMany {
            message: format!(
                "too many login attempts: try again in {} s",
                wait.as_secs().max(1)
            ),
            retry_after: wait,
        });
    }
    let user = if valid_name {
        let _permit = state.logins.check_permit().await?;
        let users = state.users.clone();
        let (checked, password) = (name.clone(), form.password);
        tokio::task::spawn_blocking(move || users.verify(&checked, &password))
            .await
            .map_err(|error| UiError::Internal(error.to_string()))?
            .map_err(|error| UiError::Unavailable(error.to_string()))?
    } else {
        None
    };
    let Some(user) = user else {
        tracing::info!(user = ?counted, %client, "failed login");
        return Ok(login_page(
            next,
            name,
            Some("Wrong user name or password.".to_owned()),
            super::over_tls(&headers),
        ));
    };
    state.logins.succeeded(&name, &client);
    // A session the browser already had ends: one login, one session.
    if let Some(previous) = cookie_value(&headers, SESSION_COOKIE) {
        let users = state.users.clone();
        let _ = tokio::task::spawn_blocking(move || users.end_session(&previous)).await;
    }
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
        .secure(super::over_tls(&headers))
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

/// `POST /logout`: the session ends on the server, the cookie is cleared.
pub async fn logout(
    viewer: super::Viewer,
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<super::CsrfForm>,
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
    fn attempts_are_counted_as_they_start_per_name_and_client_per_name_and_per_client() {
        let limiter = LoginLimiter::default();
        for _ in 0..MAX_ATTEMPTS_PER_NAME_AND_CLIENT {
            assert!(limiter.begin("root", "10.0.0.1").is_ok());
        }
        let wait = limiter
            .begin("root", "10.0.0.1")
            .expect_err("the pair is blocked");
        assert!(wait <= WINDOW && wait > Duration::from_secs(290));
        // Another client may still try the name: one attacker cannot lock the user out.
        assert!(limiter.begin("root", "10.0.0.2").is_ok());
        for i in 0..MAX_ATTEMPTS_PER_CLIENT {
            let _ = limiter.begin(&format!("spray{i}"), "10.0.0.3");
        }
        assert!(
            limiter.begin("fresh", "10.0.0.3").is_err(),
            "the client is blocked"
        );
        limiter.succeeded("root", "10.0.0.1");
        assert!(limiter.begin("root", "10.0.0.1").is_ok());
        for client in 0..MAX_ATTEMPTS_PER_NAME {
            let _ = limiter.begin("admin", &format!("10.1.0.{client}"));
        }
        assert!(
            limiter.begin("admin", "10.2.0.1").is_err(),
            "the name's looser limit holds"
        );
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64() {
        let a: std::net::IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: std::net::IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        assert_eq!(client_key(a), client_key(b));
        assert_eq!(client_key("127.0.0.1".parse().unwrap()), "127.0.0.1");
        assert_eq!(client_key("::ffff:10.0.0.1".parse().unwrap()), "10.0.0.1");
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
