//! The platform's REST API: datasets, experiments, runs, metrics, events, checkpoints, workers
//! and tokens under `/v1`, plus health, Prometheus metrics, the OpenAPI document and the web
//! console's static files.
//!
//! [`app::build`] connects to Postgres and object storage, applies migrations and binds the
//! listener; [`app::Application::run_until_stopped`] serves until SIGTERM or SIGINT. Each
//! resource module exposes a `router()` whose handlers are documented with utoipa, so the
//! OpenAPI document ([`openapi::document`]) always matches the routes.

pub mod app;
pub mod auth;
pub mod checkpoints;
pub mod config;
pub mod console;
pub mod datasets;
pub mod error;
pub mod events;
pub mod experiments;
pub mod health;
pub mod limits;
pub mod metrics;
pub mod openapi;
pub mod prometheus;
pub mod runs;
pub mod workers;

pub use app::{AppState, Application, build};
pub use config::Config;
pub use error::{ApiError, ApiResult};
