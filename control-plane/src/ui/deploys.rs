//! `GET /deploys` (running rollouts with their steps, weights and the judge's latest decision, then the history),
//! `GET /deploys/{id}` (one deployment: its steps, every decision record with both versions' estimates and
//! intervals, its events), and the actions: `POST /deploys/{id}/{pause|resume|promote|promote-full|abort}` and
//! `POST /services/{name}/rollback`. Buttons show only to roles that may use them, ask for confirmation (the page's
//! script), carry the session's CSRF token, and go through the same state functions and audit log as the API.

use askama::Template;
use axum::extract::{Form, Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use gantry_proto::Access;
use gantry_proto::deployments::{Decision, Deployment, Event};
use serde::Deserialize;

use super::{CsrfForm, Layout, UiError, Viewer, blocking, format, html};
use crate::api::AppState;
use crate::state::deployments;
use crate::state::platform::{Control, PlatformError};

#[derive(Template)]
#[template(path = "deploys.html")]
struct DeploysPage {
    layout: Layout,
    service: String,
    running: Vec<Deployment>,
    deploys: Vec<Deployment>,
}

impl DeploysPage {
    fn fmt_pct(&self, ratio: &f64) -> String {
        format::percent(*ratio)
    }
    fn fmt_ms(&self, ms: &f64) -> String {
        format::millis(*ms)
    }
    fn interval(&self, low: &f64, high: &f64) -> String {
        interval(*low, *high, false)
    }
    fn interval_pct(&self, low: &f64, high: &f64) -> String {
        interval(*low, *high, true)
    }
    fn evalue(&self, value: &f64) -> String {
        evalue(*value)
    }
}

/// `[low, high]` of an interval, in percent or milliseconds; an unbounded end is `∞`.
fn interval(low: f64, high: f64, percent: bool) -> String {
    let end = |v: f64| {
        if !v.is_finite() {
            "∞".to_owned()
        } else if percent {
            format::percent(v)
        } else {
            format::millis(v)
        }
    };
    format!("[{}, {}]", end(low), end(high))
}

fn evalue(value: f64) -> String {
    if value >= 1e4 {
        format!("{value:.2e}")
    } else {
        format::number(value)
    }
}

/// `?service=` of the deploys page.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    service: Option<String>,
}

/// `GET /deploys`.
pub async fn list(
    viewer: Viewer,
    State(state): State<AppState>,
    Query(query): Query<ListQuery>,
) -> Result<Response, UiError> {
    let service = query.service.unwrap_or_default();
    let filter = Some(service.clone()).filter(|s| !s.is_empty());
    let (running, deploys) = blocking(&state.platform, move |platform| {
        platform
            .db()
            .read(|c| {
                let running = deployments::active(c)?
                    .iter()
                    .filter(|row| filter.as_deref().is_none_or(|s| row.service == s))
                    .map(|row| deployments::to_api(c, row))
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                let history = deployments::list(c, filter.as_deref(), 0, u64::MAX, 100)?
                    .iter()
                    .map(|row| deployments::to_api(c, row))
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                Ok((running, history))
            })
            .map_err(PlatformError::from)
    })
    .await?;
    let page = DeploysPage {
        layout: viewer.layout("deploys", "Deploys".into()),
        service,
        running,
        deploys,
    };
    Ok(html(&page))
}

#[derive(Template)]
#[template(path = "deploy.html")]
struct DeployPage {
    layout: Layout,
    d: Deployment,
    latest: Option<Decision>,
    events: Vec<Event>,
    /// What the new revision changed, field by field.
    diff: Vec<gantry_proto::platform::FieldChange>,
}

impl DeployPage {
    fn fmt_pct(&self, ratio: &f64) -> String {
        format::percent(*ratio)
    }
    fn fmt_ms(&self, ms: &f64) -> String {
        format::millis(*ms)
    }
    fn interval(&self, low: &f64, high: &f64) -> String {
        interval(*low, *high, false)
    }
    fn interval_pct(&self, low: &f64, high: &f64) -> String {
        interval(*low, *high, true)
    }
    fn evalue(&self, value: &f64) -> String {
        evalue(*value)
    }
    fn json(&self, value: &Option<serde_json::Value>) -> String {
        value
            .as_ref()
            .map_or("-".to_owned(), |v| format::visible(&v.to_string()))
    }
    /// Whether step `index` is done, current or ahead.
    fn step_state(&self, index: &usize) -> &'static str {
        let current = self.d.step as usize;
        if *index < current || (self.d.status == gantry_proto::deployments::Status::Succeeded) {
            "done"
        } else if *index == current && self.d.status.active() {
            "current"
        } else {
            "ahead"
        }
    }
}

/// `GET /deploys/{id}`.
pub async fn page(
    viewer: Viewer,
    State(state): State<AppState>,
    Path(id): Path<u64>,
) -> Result<Response, UiError> {
    let (d, events, diff) = blocking(&state.platform, move |platform| {
        let d = platform.deployment(id)?;
        let events = platform
            .db()
            .read(|c| deployments::events(c, &[id], 0, 1000))?;
        let diff = platform
            .revisions(&d.service)?
            .into_iter()
            .find(|r| r.revision == d.to_revision)
            .map(|r| r.diff)
            .unwrap_or_default();
        Ok::<_, PlatformError>((d, events, diff))
    })
    .await?;
    let page = DeployPage {
        layout: viewer.layout("deploys", format!("Deploy #{id} · {}", d.service)),
        latest: d.decisions.last().cloned(),
        d,
        events,
        diff,
    };
    Ok(html(&page))
}

/// `POST /deploys/{id}/{action}`: pause, resume, promote, promote-full or abort.
pub async fn act(
    viewer: Viewer,
    State(state): State<AppState>,
    Path((id, action)): Path<(u64, String)>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, UiError> {
    viewer.check(&form.csrf, Access::Deploy)?;
    let control = match action.as_str() {
        "pause" => Control::Pause,
        "resume" => Control::Resume,
        "promote" => Control::Promote { full: false },
        "promote-full" => Control::Promote { full: true },
        "abort" => Control::Abort,
        other => {
            return Err(UiError::NotFound(format!(
                "no action `{other}`: pause, resume, promote, promote-full or abort"
            )));
        }
    };
    let by = viewer.session.actor();
    blocking(&state.platform, move |platform| {
        platform.control(id, control, &by)
    })
    .await?;
    tracing::info!(user = %viewer.session.user.name, id, %action, "deployment action from the dashboard");
    state.rollouts.wake();
    Ok(Redirect::to(&format!("/deploys/{id}")).into_response())
}

/// `POST /services/{name}/rollback`: back to the last stable revision, fast-tracked.
pub async fn rollback(
    viewer: Viewer,
    State(state): State<AppState>,
    Path(service): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, UiError> {
    viewer.check(&form.csrf, Access::Deploy)?;
    let by = viewer.session.actor();
    let name = service.clone();
    let deployment = blocking(&state.platform, move |platform| {
        platform.rollback(&name, None, &by)
    })
    .await?;
    tracing::info!(user = %viewer.session.user.name, %service, id = deployment.id, "rollback from the dashboard");
    state.rollouts.wake();
    crate::api::platform::replan(&state).await;
    Ok(Redirect::to(&format!("/deploys/{}", deployment.id)).into_response())
}
