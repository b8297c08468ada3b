//! The OpenAPI document, assembled by utoipa from every router's annotated handlers, served at
//! `/openapi.json`, and rendered for people at `/api-docs` by a self-contained page (no CDN).
//!
//! `mpl-server openapi` prints the same document; the committed copy in `openapi/openapi.json`
//! is checked against it by `tests/openapi_fresh.rs`.

use axum::Router;
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa_axum::router::OpenApiRouter;

use crate::app::{AppState, open_routes, v1_routes};

/// The browsable API page, which fetches `/openapi.json` and lists the operations.
const API_DOCS_PAGE: &str = include_str!("api_docs.html");

#[derive(OpenApi)]
#[openapi(
    info(
        title = "MPL platform API",
        description = "Datasets, experiments, runs, metrics, events and checkpoints of the Meta \
            Pseudo Labels training platform. Every `/v1` route needs `Authorization: Bearer \
            <token>`; errors are RFC 9457 problem documents.",
    ),
    modifiers(&BearerSecurity),
    components(schemas(crate::error::Problem, mpl_protocol::FieldError)),
    tags(
        (name = "tokens", description = "API tokens and their scopes"),
        (name = "datasets", description = "Upload, ingestion and samples of image datasets"),
        (name = "experiments", description = "Named groups of runs"),
        (name = "runs", description = "Training runs: submit, follow, cancel, retry"),
        (name = "checkpoints", description = "Checkpoint files and exported students"),
        (name = "workers", description = "Schedulers and the queue"),
        (name = "health", description = "Liveness and readiness"),
    )
)]
struct ApiDoc;

/// Declares the bearer scheme and requires it everywhere (open routes override with `()`).
struct BearerSecurity;

impl utoipa::Modify for BearerSecurity {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let scheme = SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some("An API token created with POST /v1/tokens"))
                .build(),
        );
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme("bearer", scheme);
        openapi.security = Some(vec![utoipa::openapi::security::SecurityRequirement::new(
            "bearer",
            Vec::<String>::new(),
        )]);
    }
}

/// Nests `v1` under `/v1`, adds the open routes, and splits the result into the axum router and
/// its OpenAPI document.
pub fn assemble(
    v1: OpenApiRouter<AppState>,
    open: OpenApiRouter<AppState>,
) -> (Router<AppState>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .nest("/v1", v1)
        .merge(open)
        .split_for_parts()
}

/// The complete OpenAPI document.
pub fn document() -> utoipa::openapi::OpenApi {
    assemble(v1_routes(), open_routes()).1
}

/// The document as pretty JSON with a trailing newline, exactly as committed.
pub fn document_json() -> String {
    let mut text = document()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    text.push('\n');
    text
}

/// `/openapi.json` and `/api-docs`, open to everyone.
pub fn router(document: utoipa::openapi::OpenApi) -> Router<AppState> {
    let json = std::sync::Arc::new(
        document
            .to_pretty_json()
            .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}")),
    );
    Router::new()
        .route(
            "/openapi.json",
            get(move || {
                let json = json.clone();
                async move {
                    (
                        [(header::CONTENT_TYPE, "application/json")],
                        (*json).clone(),
                    )
                }
            }),
        )
        .route("/api-docs", get(api_docs))
        .route("/api-docs/", get(api_docs))
}

/// The browsable API page.
async fn api_docs() -> Response {
    Html(API_DOCS_PAGE).into_response()
}
