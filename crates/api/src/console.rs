//! The web console's static files, served at `/` from `MPL_CONSOLE_DIR` with a fallback to
//! `index.html` for the console's own client-side routes.
//!
//! This is the router's fallback, so it also answers unknown `/v1` paths, with a 404 problem
//! document rather than the console page. File paths are resolved by `tower-http`'s `ServeDir`,
//! which refuses `..` and absolute segments, so no request reaches outside the console directory.

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use tower::ServiceExt;
use tower_http::services::{ServeDir, ServeFile};

use crate::app::AppState;
use crate::error::ApiError;

/// Answers every request no route matched.
pub async fn fallback(State(state): State<AppState>, request: Request) -> Response {
    let path = request.uri().path();
    if path == "/v1" || path.starts_with("/v1/") {
        return ApiError::NotFound("route").into_response();
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return ApiError::NotFound("route").into_response();
    }
    let dir = &state.config.console_dir;
    let index = dir.join("index.html");
    if !index.is_file() {
        return not_built_page(dir);
    }
    let serve = ServeDir::new(dir).fallback(ServeFile::new(index));
    match serve.oneshot(request).await {
        Ok(response) => response.into_response(),
        Err(never) => match never {},
    }
}

/// The page shown at `/` when the console has not been built.
fn not_built_page(dir: &std::path::Path) -> Response {
    let dir = html_escape(&dir.display().to_string());
    let page = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>MPL platform</title></head>\
         <body><h1>The console is not built</h1>\
         <p>No <code>index.html</code> was found in <code>{dir}</code> (set by \
         <code>MPL_CONSOLE_DIR</code>). Build it with <code>npm ci &amp;&amp; npm run build</code> \
         in <code>console/</code>, then reload this page.</p>\
         <p>The REST API is available meanwhile: see <a href=\"/api-docs\">/api-docs</a> and \
         <a href=\"/openapi.json\">/openapi.json</a>.</p></body></html>"
    );
    (
        StatusCode::OK,
        [(header::CACHE_CONTROL, "no-store")],
        Html(page),
    )
        .into_response()
}

/// Escapes the characters HTML gives meaning to.
pub fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
