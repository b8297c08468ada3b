//! Checkpoints of runs: listing, metadata, and streamed file downloads.

use utoipa_axum::router::OpenApiRouter;

use crate::app::AppState;

/// The checkpoint routes, to be nested under `/v1`.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
}
