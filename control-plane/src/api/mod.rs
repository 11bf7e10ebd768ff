//! The HTTP API: one router for `/api/v1`, the OTLP/HTTP paths, health and `/metrics`; the error type every handler
//! returns; and the extractor that checks the caller's token and role on every route.

pub(crate) mod deployments;
mod health;
pub(crate) mod logs;
pub(crate) mod metrics;
mod nodes;
pub(crate) mod platform;
pub(crate) mod time;
mod tokens;
mod traces;

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use gantry_proto::{Access, ErrorBody, TokenInfo};

use gantry_otlp::Receiver;
use gantry_store::{Store, StoreError};

use crate::auth::{AuthError, authorize};
use crate::ingest::PlaneIntake;
use crate::instances::InstanceRegistry;
use crate::nodes::NodeRegistry;
use crate::scheduler::Scheduler;
use crate::state::StateDb;
use crate::state::platform::PlatformStore;
use crate::state::tokens::{TokenError, TokenStore};
use crate::telemetry::SelfMetrics;
use gantry_support::CancellationToken;

/// How long a node may be down before its instances move, unless configured (`node_grace_period_ms`).
pub const DEFAULT_NODE_GRACE_PERIOD: Duration = Duration::from_secs(60);

/// Everything handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The telemetry store.
    pub store: Arc<dyn Store>,
    /// API tokens.
    pub tokens: TokenStore,
    /// Dashboard users and their sessions.
    pub users: crate::state::users::UserStore,
    /// Failed dashboard logins, by name and by client address.
    pub logins: Arc<crate::ui::LoginLimiter>,
    /// The platform's services, revisions, secrets and audit log.
    pub platform: PlatformStore,
    /// The placement loop.
    pub scheduler: Arc<Scheduler>,
    /// The rollout engine.
    pub rollouts: Arc<crate::rollout::Rollouts>,
    /// What agents report their instances doing, and the generation their long polls wait on.
    pub instances: Arc<InstanceRegistry>,
    /// The nodes that heartbeat.
    pub nodes: Arc<NodeRegistry>,
    /// The plane's own metrics.
    pub metrics: Arc<SelfMetrics>,
    /// The OTLP receiver whose HTTP routes the API port serves too.
    pub otlp: Receiver<PlaneIntake>,
    /// The dashboards shown under `/dashboards/NAME`.
    pub dashboards: Arc<Vec<crate::dashboards::Dashboard>>,
}

impl AppState {
    /// The state of a plane over its store, state database and nodes, with a fresh `SelfMetrics` and the OTLP
    /// receiver (at most `max_body_bytes` per request) whose HTTP routes the API serves.
    pub fn new(
        store: Arc<dyn Store>,
        db: Arc<StateDb>,
        nodes: Arc<NodeRegistry>,
        max_body_bytes: usize,
    ) -> AppState {
        let tokens = TokenStore::new(db.clone());
        let users = crate::state::users::UserStore::new(db.clone());
        let platform = PlatformStore::new(db.clone());
        let instances = Arc::new(InstanceRegistry::default());
        let feed = Arc::new(crate::rollout::feed::Feed::default());
        let rollouts = Arc::new(crate::rollout::Rollouts::new(
            db.clone(),
            instances.clone(),
            feed.clone(),
        ));
        let scheduler = Arc::new(Scheduler::new(
            db,
            nodes.clone(),
            instances.clone(),
            DEFAULT_NODE_GRACE_PERIOD,
        ));
        let metrics = Arc::new(SelfMetrics::new());
        let otlp = Receiver::new(
            Arc::new(PlaneIntake {
                store: store.clone(),
                tokens: tokens.clone(),
                metrics: metrics.clone(),
                feed,
            }),
            gantry_otlp::ReceiverConfig::new(crate::ingest::MAX_IN_FLIGHT, max_body_bytes),
        );
        AppState {
            store,
            tokens,
            users,
            logins: Arc::new(crate::ui::LoginLimiter::default()),
            platform,
            scheduler,
            rollouts,
            instances,
            nodes,
            metrics,
            otlp,
            dashboards: Arc::new(crate::dashboards::built_in().unwrap_or_default()),
        }
    }

    /// The same state with these dashboards.
    pub fn with_dashboards(mut self, dashboards: Vec<crate::dashboards::Dashboard>) -> AppState {
        self.dashboards = Arc::new(dashboards);
        self
    }

    /// The same state for a running plane: `grace` is the time a node may be down before its instances move, and
    /// agents' long polls end when `shutdown` is cancelled.
    pub fn with_runtime(mut self, grace: Duration, shutdown: CancellationToken) -> AppState {
        self.instances = Arc::new(InstanceRegistry::new(shutdown));
        self.scheduler = Arc::new(Scheduler::new(
            self.platform.db().clone(),
            self.nodes.clone(),
            self.instances.clone(),
            grace,
        ));
        self.rollouts = Arc::new(crate::rollout::Rollouts::new(
            self.platform.db().clone(),
            self.instances.clone(),
            self.rollouts.feed.clone(),
        ));
        self
    }

    /// Records a query's latency in `gantry_query_seconds` and returns it in milliseconds.
    pub fn query_done(&self, endpoint: &'static str, started: std::time::Instant) -> u64 {
        let took = started.elapsed();
        self.metrics.query(endpoint, took.as_secs_f64());
        took.as_millis() as u64
    }
}

/// Runs `work` on a state store (tokens, the platform) on a blocking thread: a committed write fsyncs.
///
/// # Errors
/// `work`'s error as an [`ApiError`]; a panic of the task is a 500.
pub async fn blocking<S, T, E>(
    store: &S,
    work: impl FnOnce(&S) -> Result<T, E> + Send + 'static,
) -> Result<T, ApiError>
where
    S: Clone + Send + 'static,
    T: Send + 'static,
    E: Into<ApiError> + Send + 'static,
{
    let store = store.clone();
    tokio::task::spawn_blocking(move || work(&store))
        .await
        .map_err(|error| ApiError::Internal(format!("state task failed: {error}")))?
        .map_err(Into::into)
}

/// The whole HTTP application of the API port.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/api/v1/logs", get(logs::search))
        .route("/api/v1/logs/histogram", get(logs::histogram))
        .route("/api/v1/traces", get(traces::search))
        .route("/api/v1/traces/{trace_id}", get(traces::by_id))
        .route("/api/v1/services", get(traces::services))
        .route("/api/v1/red", get(traces::red))
        .route("/api/v1/service-map", get(traces::service_map))
        .route("/api/v1/services/{name}", get(platform::status))
        .route("/api/v1/services/{name}/scale", post(platform::scale))
        .route("/api/v1/services/{name}/stop", post(platform::stop))
        .route("/api/v1/services/{name}/restart", post(platform::restart))
        .route("/api/v1/nodes/{agent_id}/drain", post(nodes::drain))
        .route("/api/v1/nodes/{agent_id}/activate", post(nodes::activate))
        .route("/api/v1/services/{name}/start", post(platform::start))
        .route(
            "/api/v1/services/{name}/revisions",
            get(platform::revisions),
        )
        .route("/api/v1/apply", post(platform::apply))
        .route(
            "/api/v1/deployments",
            get(deployments::list).post(deployments::create),
        )
        .route("/api/v1/deployments/{id}", get(deployments::get))
        .route("/api/v1/deployments/{id}/events", get(deployments::events))
        .route(
            "/api/v1/deployments/{id}/{action}",
            post(deployments::control),
        )
        .route(
            "/api/v1/services/{name}/rollback",
            post(deployments::rollback),
        )
        .route("/api/v1/secrets", get(platform::list_secrets))
        .route(
            "/api/v1/secrets/{name}",
            put(platform::set_secret).delete(platform::delete_secret),
        )
        .route("/api/v1/audit", get(platform::audit))
        .route("/api/v1/metrics", get(metrics::query))
        .route("/api/v1/tokens", get(tokens::list).post(tokens::create))
        .route("/api/v1/tokens/{id}", delete(tokens::revoke))
        .route(
            "/api/v1/users",
            get(tokens::list_users).post(tokens::create_user),
        )
        .route("/api/v1/users/{name}", delete(tokens::delete_user))
        .route(gantry_proto::HEARTBEAT_PATH, post(nodes::heartbeat))
        .route("/api/v1/nodes", get(nodes::list))
        .route("/api/v1/nodes/{agent_id}", get(nodes::by_id))
        .route(
            "/api/v1/nodes/{agent_id}/assignments",
            get(nodes::assignments),
        )
        .route(
            "/api/v1/nodes/{agent_id}/instances",
            post(nodes::report_instances),
        )
        .fallback(not_found)
        .with_state(state.clone())
        .merge(state.otlp.http_router())
}

/// The OTLP/HTTP paths alone, for the standard OTLP port.
pub fn otlp_app(state: &AppState) -> Router {
    state.otlp.http_router().fallback(not_found)
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route: see docs/API.md for the API reference".to_owned())
}

/// An API failure, mapped to one status code each.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A parameter is wrong.
    #[error("{0}")]
    BadRequest(String),
    /// A query does not parse, or the store cannot run one of its leaves as written.
    #[error("invalid query: {message}")]
    BadQuery {
        /// The parser's or the store's message, starting `at position N: `.
        message: String,
        /// Where, in characters.
        position: usize,
    },
    /// A query that parses and could run, but past its budget (too many index terms to expand, or its deadline):
    /// 422, with the position of the clause being expanded when there is one.
    #[error("query too expensive: {message}")]
    TooExpensive {
        /// Which limit, where, and how to narrow the query.
        message: String,
        /// Where the clause starts, in characters, when the limit was reached while expanding one.
        position: Option<usize>,
    },
    /// A platform spec the plane refuses (400), with its file, line, column and field.
    #[error("invalid platform spec: {0}")]
    Spec(crate::spec::SpecError),
    /// No valid token, or a role that may not do this (401 or 403).
    #[error(transparent)]
    Auth(AuthError),
    /// A valid token whose limits do not cover this (403): a deployer token limited to other services.
    #[error("{0}")]
    Forbidden(String),
    /// Nothing there.
    #[error("{0}")]
    NotFound(String),
    /// A conflict with existing state.
    #[error("{0}")]
    Conflict(String),
    /// The caller sends too fast: slow down and retry after the time given.
    #[error("{message}")]
    TooManyRequests {
        /// What is going on.
        message: String,
        /// When to retry.
        retry_after: Duration,
    },
    /// Try again later.
    #[error("{message}")]
    Unavailable {
        /// What is going on.
        message: String,
        /// When to retry.
        retry_after: Duration,
    },
    /// A failure of ours.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Invalid(message) => ApiError::BadRequest(message),
            // Without the query's text there is no position to give (see `ParsedQuery::refusal`).
            StoreError::Query { message, .. } => {
                ApiError::BadRequest(format!("invalid query: {message}"))
            }
            StoreError::Overloaded { retry_after } => ApiError::Unavailable {
                message: error.to_string(),
                retry_after,
            },
            StoreError::Unwritable(_) => ApiError::Unavailable {
                message: error.to_string(),
                retry_after: Duration::from_secs(5),
            },
            StoreError::NotReady | StoreError::ShuttingDown => ApiError::Unavailable {
                message: error.to_string(),
                retry_after: Duration::from_secs(1),
            },
            StoreError::TooExpensive { message, .. } => ApiError::TooExpensive {
                message,
                position: None,
            },
            StoreError::QueriesBusy { retry_after, .. } => ApiError::Unavailable {
                message: error.to_string(),
                retry_after,
            },
            // Nobody is left to read this answer.
            StoreError::Cancelled => ApiError::Unavailable {
                message: error.to_string(),
                retry_after: Duration::from_secs(1),
            },
            StoreError::Internal(message) => ApiError::Internal(message),
        }
    }
}

impl From<TokenError> for ApiError {
    fn from(error: TokenError) -> Self {
        match error {
            TokenError::NameTaken(_) => ApiError::Conflict(error.to_string()),
            TokenError::BadName | TokenError::BadServices(_) => {
                ApiError::BadRequest(error.to_string())
            }
            TokenError::NotFound(_) => ApiError::NotFound(error.to_string()),
            // The database is busy or failing: a retry can succeed.
            TokenError::State(_) => ApiError::Unavailable {
                message: error.to_string(),
                retry_after: Duration::from_secs(1),
            },
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        match error {
            AuthError::Unavailable(message) => ApiError::Unavailable {
                message,
                retry_after: Duration::from_secs(1),
            },
            other => ApiError::Auth(other),
        }
    }
}

impl From<gantry_query::ParseError> for ApiError {
    fn from(error: gantry_query::ParseError) -> Self {
        ApiError::BadQuery {
            position: error.position,
            message: error.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::BadRequest(_) | ApiError::BadQuery { .. } | ApiError::Spec(_) => {
                StatusCode::BAD_REQUEST
            }
            ApiError::TooExpensive { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Auth(AuthError::Forbidden { .. }) | ApiError::Forbidden(_) => {
                StatusCode::FORBIDDEN
            }
            ApiError::Auth(_) => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if let ApiError::Internal(message) = &self {
            tracing::error!(error = %message, "request failed");
        }
        let body = ErrorBody {
            error: self.to_string(),
            position: match &self {
                ApiError::BadQuery { position, .. } => Some(*position),
                ApiError::TooExpensive { position, .. } => *position,
                _ => None,
            },
            spec: match &self {
                ApiError::Spec(error) => Some(error.location.clone()),
                _ => None,
            },
        };
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let ApiError::Unavailable { retry_after, .. }
        | ApiError::TooManyRequests { retry_after, .. } = self
        {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, retry_after.as_secs().max(1).into());
        }
        response
    }
}

/// A kind of access a route needs, as a type.
pub trait Requirement: Send + Sync + 'static {
    /// The access checked.
    const ACCESS: Access;
}

/// Writing telemetry.
pub struct IngestAccess;
/// Reading.
pub struct ReadAccess;
/// A node agent's own routes (assignments, instance reports).
pub struct NodeAccess;
/// Changing what runs (deploys, scaling, secrets).
pub struct DeployAccess;
/// Administering.
pub struct AdminAccess;

impl Requirement for IngestAccess {
    const ACCESS: Access = Access::Ingest;
}
impl Requirement for ReadAccess {
    const ACCESS: Access = Access::Read;
}
impl Requirement for NodeAccess {
    const ACCESS: Access = Access::Node;
}
impl Requirement for DeployAccess {
    const ACCESS: Access = Access::Deploy;
}
impl Requirement for AdminAccess {
    const ACCESS: Access = Access::Admin;
}

/// The authenticated caller of a route that needs `R`; rejects with 401 or 403.
pub struct Caller<R: Requirement> {
    /// Who called.
    pub token: TokenInfo,
    _requirement: PhantomData<R>,
}

impl<R: Requirement> FromRequestParts<AppState> for Caller<R> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let authorization = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        Ok(Self {
            token: authorize(&state.tokens, authorization, R::ACCESS)?,
            _requirement: PhantomData,
        })
    }
}

impl From<Caller<DeployAccess>> for Caller<ReadAccess> {
    /// A deployer may read: the same caller, for a handler that reads after a change.
    fn from(caller: Caller<DeployAccess>) -> Self {
        Caller {
            token: caller.token,
            _requirement: PhantomData,
        }
    }
}

/// Query-string parameters; a malformed query string is a JSON 400 like every other API error.
#[derive(axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Params<T>(pub T);

/// A JSON body; a malformed one is a JSON 400 like every other API error.
#[derive(axum::extract::FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct JsonBody<T>(pub T);

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(rejection: axum::extract::rejection::QueryRejection) -> Self {
        ApiError::BadRequest(rejection.body_text())
    }
}

impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(rejection: axum::extract::rejection::JsonRejection) -> Self {
        ApiError::BadRequest(rejection.body_text())
    }
}

/// Parses the `q` parameter (empty means everything).
pub fn parse_query(q: Option<&str>) -> Result<ParsedQuery, ApiError> {
    let (query, leaves) = gantry_query::parse_located(q.unwrap_or(""))?;
    Ok(ParsedQuery { query, leaves })
}

/// A query parameter, parsed, with where each of its leaves starts.
pub struct ParsedQuery {
    /// The AST handed to the store.
    pub query: gantry_query::Query,
    /// Character offset of each leaf, in reading order.
    leaves: Vec<usize>,
}

impl ParsedQuery {
    /// A store error as an API error: a leaf the store refused becomes a 400 at that leaf's position, a leaf past
    /// the query's budget a 422 at its position.
    pub fn refusal(&self, error: StoreError) -> ApiError {
        match error {
            StoreError::TooExpensive {
                message,
                leaf: Some(leaf),
            } => match self.leaves.get(leaf) {
                Some(&position) => ApiError::TooExpensive {
                    message: format!("at position {position}: {message}"),
                    position: Some(position),
                },
                None => ApiError::TooExpensive {
                    message,
                    position: None,
                },
            },
            StoreError::Query { message, leaf } => match self.leaves.get(leaf) {
                Some(&position) => ApiError::BadQuery {
                    message: format!("at position {position}: {message}"),
                    position,
                },
                None => ApiError::from(StoreError::Query { message, leaf }),
            },
            other => ApiError::from(other),
        }
    }
}

#[cfg(test)]
mod tests;
