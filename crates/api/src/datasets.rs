//! Datasets: creation, streamed part uploads, background ingestion and samples.

use utoipa_axum::router::OpenApiRouter;

use crate::app::AppState;

/// The dataset routes, to be nested under `/v1`.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
}

/// Restarts ingestions that a previous process left half done.
pub async fn resume_interrupted_ingestions(_state: &AppState) -> anyhow::Result<()> {
    Ok(())
}
