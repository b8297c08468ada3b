//! The api's one error type and its RFC 9457 `application/problem+json` responses.
//!
//! Handlers return [`ApiResult`]; every [`ApiError`] maps to exactly one status code and a
//! problem document `{type, title, status, detail, errors?}` where `errors` names each bad field.
//! Internal details (database and storage errors) are logged where they are turned into a
//! response and never sent to the client.

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use mpl_protocol::FieldError;
use serde::Serialize;
use serde::de::DeserializeOwned;
use utoipa::ToSchema;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The named resource (`dataset`, `run`, ...) does not exist.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The request is well-formed but fields are invalid; each one is named.
    #[error("the request has invalid fields")]
    Validation(Vec<FieldError>),
    /// The request conflicts with the resource's current state.
    #[error("{0}")]
    Conflict(String),
    /// The request cannot be understood (malformed JSON, bad header, bad parameter).
    #[error("{0}")]
    BadRequest(String),
    /// The body is larger than the limit (bytes) for this route.
    #[error("the request body exceeds the limit of {0} bytes")]
    PayloadTooLarge(u64),
    /// No valid bearer token was given.
    #[error("a valid bearer token is required")]
    Unauthorized,
    /// The token's scope does not allow this request.
    #[error("the token's scope does not allow this request")]
    Forbidden,
    /// The token made too many requests; retry after the given number of seconds.
    #[error("too many requests; retry in {retry_after_secs} s")]
    RateLimited {
        /// Seconds until a request will be accepted again.
        retry_after_secs: u64,
    },
    /// A dependency (database, storage) or the server itself cannot serve the request now.
    #[error("{0}")]
    Unavailable(String),
    /// Anything unexpected; logged, and answered with a generic message.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// Result of a handler.
pub type ApiResult<T> = Result<T, ApiError>;

/// An RFC 9457 problem document.
#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem.
    #[serde(rename = "type")]
    pub kind: String,
    /// Short summary of the kind of problem.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong with this request.
    pub detail: String,
    /// Each invalid field, by dotted path, for validation problems.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<FieldError>>,
}

impl ApiError {
    /// The status code this error is answered with.
    pub fn status_code(&self) -> StatusCode {
        match self {
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden => StatusCode::FORBIDDEN,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A validation error for a single field.
    pub fn invalid_field(field: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError::Validation(vec![FieldError {
            field: field.into(),
            message: message.into(),
        }])
    }

    fn slug(&self) -> &'static str {
        match self {
            ApiError::NotFound(_) => "not-found",
            ApiError::Validation(_) => "validation",
            ApiError::Conflict(_) => "conflict",
            ApiError::BadRequest(_) => "bad-request",
            ApiError::PayloadTooLarge(_) => "payload-too-large",
            ApiError::Unauthorized => "unauthorized",
            ApiError::Forbidden => "forbidden",
            ApiError::RateLimited { .. } => "rate-limited",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }

    fn to_problem(&self) -> Problem {
        let status = self.status_code();
        let detail = match self {
            ApiError::Internal(_) => "an internal error occurred; it has been logged".to_owned(),
            ApiError::Validation(errors) => describe_fields(errors),
            other => other.to_string(),
        };
        Problem {
            kind: format!("urn:mpl:problem:{}", self.slug()),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail,
            errors: match self {
                ApiError::Validation(errors) => Some(errors.clone()),
                _ => None,
            },
        }
    }
}

fn describe_fields(errors: &[FieldError]) -> String {
    let parts: Vec<String> = errors
        .iter()
        .map(|e| {
            if e.field.is_empty() {
                e.message.clone()
            } else {
                format!("{}: {}", e.field, e.message)
            }
        })
        .collect();
    parts.join("; ")
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            ApiError::Internal(err) => tracing::error!(error = ?err, "request failed"),
            ApiError::Unavailable(reason) => tracing::warn!(reason, "request refused"),
            _ => {}
        }
        let problem = self.to_problem();
        let mut response = (self.status_code(), Json(problem)).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        match self {
            ApiError::RateLimited { retry_after_secs } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            }
            ApiError::Unavailable(_) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ApiError::Unauthorized => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(err: sqlx::Error) -> Self {
        match &err {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
                tracing::warn!(error = %err, "database unavailable");
                ApiError::Unavailable("the database is not reachable; retry shortly".into())
            }
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                ApiError::Conflict("a resource with the same unique value already exists".into())
            }
            // 22021 / 22P05: text PostgreSQL cannot store (a NUL character).
            sqlx::Error::Database(db)
                if matches!(db.code().as_deref(), Some("22021") | Some("22P05")) =>
            {
                ApiError::BadRequest("text fields must not contain NUL characters".into())
            }
            _ => ApiError::Internal(err.into()),
        }
    }
}

impl From<mpl_storage::StorageError> for ApiError {
    fn from(err: mpl_storage::StorageError) -> Self {
        use mpl_storage::StorageError as E;
        match err {
            E::NotFound(_) => ApiError::NotFound("stored object"),
            E::TooLarge { limit_bytes } => ApiError::PayloadTooLarge(limit_bytes),
            E::Body(e) => ApiError::BadRequest(format!("reading the request body failed: {e}")),
            E::InvalidRange { size, .. } => {
                ApiError::BadRequest(format!("the range is outside the object of {size} bytes"))
            }
            other @ (E::InvalidUrl { .. }
            | E::InvalidKey(_)
            | E::HashMismatch { .. }
            | E::File { .. }
            | E::Backend(_)) => ApiError::Internal(other.into()),
        }
    }
}

/// A JSON request body whose errors are problem documents naming the bad field.
///
/// Malformed JSON is a 400; a missing, unknown or mistyped field is a 422 naming its dotted path;
/// a body over the route's limit is a 413; a missing `application/json` content type is a 400.
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !has_json_content_type(&req) {
            return Err(ApiError::BadRequest(
                "expected a JSON body with Content-Type: application/json".into(),
            ));
        }
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(body_rejection)?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// Parses JSON, naming the path of a field that does not fit `T`.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> ApiResult<T> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    match serde_path_to_error::deserialize(&mut deserializer) {
        Ok(value) => {
            deserializer
                .end()
                .map_err(|e| ApiError::BadRequest(format!("the body is not valid JSON: {e}")))?;
            Ok(value)
        }
        Err(err) => {
            let inner = err.inner();
            if inner.is_syntax() || inner.is_eof() || inner.is_io() {
                return Err(ApiError::BadRequest(format!(
                    "the body is not valid JSON: {inner}"
                )));
            }
            let path = err.path().to_string();
            let field = if path == "." { String::new() } else { path };
            Err(ApiError::invalid_field(field, inner.to_string()))
        }
    }
}

fn has_json_content_type(req: &Request) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|mime| {
            let mime = mime.trim().to_ascii_lowercase();
            mime == "application/json" || mime.ends_with("+json")
        })
        .unwrap_or(false)
}

fn body_rejection(rejection: BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge(crate::limits::MAX_JSON_BODY_BYTES as u64)
    } else {
        ApiError::BadRequest(format!("reading the request body failed: {rejection}"))
    }
}

/// Turns the plain-text 4xx answers of axum's own extractors (a malformed path parameter or query
/// string, say) into problem documents, so every error the api sends has one shape.
pub async fn problem_for_plain_rejections(response: Response) -> Response {
    let status = response.status();
    let is_plain = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/plain"));
    if !status.is_client_error() || !is_plain {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let detail = match axum::body::to_bytes(body, 16 * 1024).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(_) => status
            .canonical_reason()
            .unwrap_or("bad request")
            .to_owned(),
    };
    let problem = Problem {
        kind: format!(
            "urn:mpl:problem:{}",
            if status == StatusCode::NOT_FOUND {
                "not-found"
            } else {
                "bad-request"
            }
        ),
        title: status.canonical_reason().unwrap_or("Error").to_owned(),
        status: status.as_u16(),
        detail,
        errors: None,
    };
    let body = serde_json::to_vec(&problem).unwrap_or_default();
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        name: String,
        inner: Inner,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        count: u32,
    }

    #[test]
    fn a_mistyped_field_is_named_by_its_path() {
        let err = parse_json::<Body>(br#"{"name": "a", "inner": {"count": "x"}}"#).unwrap_err();
        match err {
            ApiError::Validation(errors) => assert_eq!(errors[0].field, "inner.count"),
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn malformed_json_is_a_bad_request() {
        let err = parse_json::<Body>(b"{\"name\": ").unwrap_err();
        assert_eq!(err.status_code(), StatusCode::BAD_REQUEST);
        let err =
            parse_json::<Body>(br#"{"name": "a", "inner": {"count": 1}} trailing"#).unwrap_err();
        assert_eq!(err.status_code(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn internal_details_are_not_sent() {
        let problem = ApiError::Internal(anyhow::anyhow!("password=hunter2")).to_problem();
        assert!(!problem.detail.contains("hunter2"));
        assert_eq!(problem.status, 500);
    }
}
