//! Startup: connecting to Postgres and storage, applying migrations, assembling the routers and
//! middleware, and serving until a shutdown signal.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::Request;
use mpl_storage::Storage;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa_axum::router::OpenApiRouter;

use crate::config::Config;
use crate::limits::{self, Limits};
use crate::{
    auth, checkpoints, console, datasets, events, experiments, health, metrics, openapi,
    prometheus, runs, workers,
};

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The Postgres pool.
    pub db: PgPool,
    /// Object storage for dataset and checkpoint bytes.
    pub storage: Storage,
    /// The configuration the application was built with.
    pub config: Arc<Config>,
    /// Concurrency, timeout and rate limits.
    pub limits: Arc<Limits>,
}

/// The migrations in `migrations/`, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

/// A bound, ready-to-serve api.
pub struct Application {
    listener: TcpListener,
    router: Router,
    state: AppState,
}

/// Connects to the database, applies migrations, opens storage, makes sure an admin token
/// exists, and binds the listening socket.
pub async fn build(config: Config) -> anyhow::Result<Application> {
    let db = connect(&config.database_url).await?;
    MIGRATOR
        .run(&db)
        .await
        .context("applying database migrations failed")?;
    let storage = Storage::from_url(&config.storage_url)
        .with_context(|| format!("opening storage {:?} failed", config.storage_url))?;
    auth::ensure_admin_token(&db, config.admin_token.as_deref()).await?;
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {} failed", config.listen))?;
    let state = AppState {
        db,
        storage,
        limits: Arc::new(Limits::new(&config)),
        config: Arc::new(config),
    };
    datasets::resume_interrupted_ingestions(&state).await?;
    let router = router(state.clone());
    Ok(Application {
        listener,
        router,
        state,
    })
}

/// Opens a pool on `database_url`.
pub async fn connect(database_url: &str) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(32)
        .acquire_timeout(Duration::from_secs(5))
        .connect(database_url)
        .await
        .context("connecting to the database (MPL_DATABASE_URL) failed")
}

/// Applies the migrations to the database at `database_url` and returns.
pub async fn migrate(database_url: &str) -> anyhow::Result<()> {
    let db = connect(database_url).await?;
    MIGRATOR
        .run(&db)
        .await
        .context("applying database migrations failed")
}

/// Every authenticated resource route, before nesting under `/v1`.
pub fn v1_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(auth::router())
        .merge(datasets::router())
        .merge(experiments::router())
        .merge(runs::router())
        .merge(metrics::router())
        .merge(events::router())
        .merge(checkpoints::router())
        .merge(workers::router())
}

/// The routes that need no token (health and readiness), with their documentation.
pub fn open_routes() -> OpenApiRouter<AppState> {
    health::router()
}

/// The complete router: `/v1` behind authentication, the open routes, the OpenAPI document and
/// the console, inside the request-id, tracing and limit layers.
pub fn router(state: AppState) -> Router {
    let v1 = v1_routes().layer(axum::middleware::from_fn_with_state(
        state.clone(),
        auth::authenticate,
    ));
    let (api, document) = openapi::assemble(v1, open_routes());
    let app = api
        .merge(openapi::router(document))
        .merge(prometheus::router())
        .fallback(console::fallback)
        .layer(axum::middleware::map_response(
            crate::error::problem_for_plain_rejections,
        ))
        .layer(DefaultBodyLimit::max(limits::MAX_JSON_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            state.limits.clone(),
            limits::limit_time,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.limits.clone(),
            limits::limit_concurrency,
        ))
        .with_state(state);

    let request_id = axum::http::HeaderName::from_static("x-request-id");
    app.layer(
        ServiceBuilder::new()
            .layer(SetRequestIdLayer::new(request_id.clone(), MakeRequestUuid))
            .layer(TraceLayer::new_for_http().make_span_with(request_span))
            .layer(PropagateRequestIdLayer::new(request_id))
            .layer(axum::middleware::from_fn(prometheus::count_responses)),
    )
}

/// The span every request runs in, with its id, method and path.
fn request_span<B>(request: &Request<B>) -> tracing::Span {
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    tracing::info_span!(
        "handling a request",
        request_id,
        method = %request.method(),
        path = %request.uri().path(),
    )
}

impl Application {
    /// The port the api listens on (useful when configured with port 0).
    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// The shared state, e.g. for tests that inspect the database.
    pub fn state(&self) -> AppState {
        self.state.clone()
    }

    /// Serves until SIGTERM or SIGINT, then finishes the requests in flight.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.run_until(shutdown_signal()).await
    }

    /// Serves until `shutdown` completes, then finishes the requests in flight.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let addr = self.listener.local_addr()?;
        tracing::info!(%addr, "api listening");
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await
            .context("serving HTTP failed")?;
        tracing::info!("api stopped");
        Ok(())
    }
}

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let interrupt = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %err, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = interrupt => tracing::info!("SIGINT received; shutting down"),
        () = terminate => tracing::info!("SIGTERM received; shutting down"),
    }
}
