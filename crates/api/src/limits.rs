//! Limits that keep one client from exhausting the server: body sizes, a request timeout, a
//! global concurrency limit and a per-token rate limit.
//!
//! JSON bodies are capped at [`MAX_JSON_BODY_BYTES`]; dataset uploads stream past that cap and
//! are held to `MPL_MAX_UPLOAD_BYTES` instead. Ordinary requests must produce their response
//! within the configured timeout; uploads are exempt (their handler reads the whole body), and
//! downloads and event streams are unaffected because the limit ends when the response starts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

use crate::error::ApiError;

/// The largest JSON request body accepted: 1 MiB.
pub const MAX_JSON_BODY_BYTES: usize = 1024 * 1024;

/// How long a request waits for a free slot before it is refused with 503.
const CONCURRENCY_WAIT: Duration = Duration::from_millis(250);

/// Shared limiter state, created once per application.
pub struct Limits {
    slots: Arc<Semaphore>,
    request_timeout: Duration,
    rate: RateLimiter,
}

impl Limits {
    /// Limits from the configuration.
    pub fn new(config: &crate::config::Config) -> Limits {
        Limits {
            slots: Arc::new(Semaphore::new(config.max_concurrent_requests)),
            request_timeout: config.request_timeout,
            rate: RateLimiter::new(config.rate_limit_per_sec, config.rate_limit_burst),
        }
    }

    /// Takes one request of `token_id`'s budget, or says how long to wait.
    pub fn check_rate(&self, token_id: Uuid) -> Result<(), ApiError> {
        self.rate
            .try_acquire(token_id, Instant::now())
            .map_err(|retry_after_secs| ApiError::RateLimited { retry_after_secs })
    }

    /// Takes one of the request slots, waiting briefly as a request would; `None` when all
    /// stay busy. The slot is free again when the permit is dropped.
    pub async fn take_slot(&self) -> Option<OwnedSemaphorePermit> {
        let slots = self.slots.clone();
        match tokio::time::timeout(CONCURRENCY_WAIT, slots.acquire_owned()).await {
            Ok(Ok(permit)) => Some(permit),
            Ok(Err(_)) | Err(_) => None,
        }
    }
}

/// Middleware: refuses requests with 503 while `max_concurrent_requests` are being handled.
pub async fn limit_concurrency(
    State(limits): State<Arc<Limits>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(permit) = limits.take_slot().await else {
        return ApiError::Unavailable("the server is at its request limit".into()).into_response();
    };
    let response = next.run(request).await;
    drop(permit);
    response
}

/// Middleware: answers 503 when a request has not produced its response in time.
pub async fn limit_time(
    State(limits): State<Arc<Limits>>,
    request: Request,
    next: Next,
) -> Response {
    if is_exempt_from_timeout(request.method(), request.uri().path()) {
        return next.run(request).await;
    }
    let timeout = limits.request_timeout;
    match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::Unavailable(format!(
            "the request did not complete within {} s",
            timeout.as_secs()
        ))
        .into_response(),
    }
}

/// Uploads read their whole body before answering, and event streams may be slow to open.
fn is_exempt_from_timeout(method: &Method, path: &str) -> bool {
    (method == Method::PUT && path.contains("/parts/")) || path.ends_with("/events")
}

/// A token bucket per API token, in memory.
///
/// Each token may make `burst` requests at once and `per_sec` per second sustained. The state is
/// per process: several api processes each grant the full rate.
pub struct RateLimiter {
    per_sec: f64,
    burst: f64,
    buckets: Mutex<HashMap<Uuid, Bucket>>,
}

struct Bucket {
    available: f64,
    updated: Instant,
}

impl RateLimiter {
    /// A limiter granting `per_sec` requests per second with bursts of `burst`.
    pub fn new(per_sec: f64, burst: f64) -> RateLimiter {
        RateLimiter {
            per_sec,
            burst,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request from `key`'s bucket at time `now`; on refusal, the whole seconds until
    /// one will be available (at least 1).
    pub fn try_acquire(&self, key: Uuid, now: Instant) -> Result<(), u64> {
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let bucket = buckets.entry(key).or_insert(Bucket {
            available: self.burst,
            updated: now,
        });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.available = (bucket.available + elapsed * self.per_sec).min(self.burst);
        bucket.updated = now;
        if bucket.available >= 1.0 {
            bucket.available -= 1.0;
            Ok(())
        } else {
            let wait_secs = (1.0 - bucket.available) / self.per_sec;
            Err(wait_secs.ceil().max(1.0) as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::body::Body;
    use axum::http::StatusCode;
    use axum::routing::{get, put};
    use tower::ServiceExt;

    fn limits(timeout: Duration) -> Arc<Limits> {
        let mut config = crate::config::Config::with_defaults("postgres://unused");
        config.request_timeout = timeout;
        config.max_concurrent_requests = 1;
        Arc::new(Limits::new(&config))
    }

    fn slow_app(limits: Arc<Limits>) -> Router {
        let slow = || async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            "done"
        };
        Router::new()
            .route("/slow", get(slow))
            .route("/v1/datasets/x/parts/images", put(slow))
            .layer(axum::middleware::from_fn_with_state(
                limits.clone(),
                limit_time,
            ))
            .layer(axum::middleware::from_fn_with_state(
                limits,
                limit_concurrency,
            ))
    }

    async fn status_of(app: Router, method: Method, uri: &str) -> StatusCode {
        let request = axum::http::Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::empty())
            .unwrap();
        app.oneshot(request).await.unwrap().status()
    }

    #[tokio::test]
    async fn a_slow_request_times_out_but_a_slow_upload_does_not() {
        let app = slow_app(limits(Duration::from_millis(50)));

        let ordinary = status_of(app.clone(), Method::GET, "/slow").await;
        let upload = status_of(app, Method::PUT, "/v1/datasets/x/parts/images").await;

        assert_eq!(ordinary, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(upload, StatusCode::OK);
    }

    #[tokio::test]
    async fn requests_beyond_the_concurrency_limit_are_refused() {
        let limits = limits(Duration::from_secs(5));
        let app = slow_app(limits.clone());
        let held = limits.take_slot().await.expect("one slot is free");

        let refused = status_of(app.clone(), Method::GET, "/slow").await;
        drop(held);
        let served = status_of(app, Method::GET, "/slow").await;

        assert_eq!(refused, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(served, StatusCode::OK);
    }

    #[test]
    fn a_bucket_allows_its_burst_then_refills_at_the_rate() {
        let limiter = RateLimiter::new(2.0, 3.0);
        let token = Uuid::new_v4();
        let start = Instant::now();
        for _ in 0..3 {
            assert!(limiter.try_acquire(token, start).is_ok());
        }
        assert_eq!(limiter.try_acquire(token, start), Err(1));
        assert!(
            limiter
                .try_acquire(token, start + Duration::from_millis(500))
                .is_ok()
        );
        assert!(
            limiter
                .try_acquire(token, start + Duration::from_millis(500))
                .is_err()
        );
    }

    #[test]
    fn tokens_have_separate_buckets() {
        let limiter = RateLimiter::new(1.0, 1.0);
        let now = Instant::now();
        assert!(limiter.try_acquire(Uuid::new_v4(), now).is_ok());
        assert!(limiter.try_acquire(Uuid::new_v4(), now).is_ok());
    }

    #[test]
    fn the_wait_is_rounded_up_to_whole_seconds() {
        let limiter = RateLimiter::new(0.1, 1.0);
        let token = Uuid::new_v4();
        let now = Instant::now();
        assert!(limiter.try_acquire(token, now).is_ok());
        assert_eq!(limiter.try_acquire(token, now), Err(10));
    }

    #[test]
    fn only_uploads_and_event_streams_skip_the_timeout() {
        let id = "0190f0a0-0000-7000-8000-000000000000";
        assert!(is_exempt_from_timeout(
            &Method::PUT,
            &format!("/v1/datasets/{id}/parts/images")
        ));
        assert!(is_exempt_from_timeout(
            &Method::GET,
            &format!("/v1/runs/{id}/events")
        ));
        assert!(!is_exempt_from_timeout(&Method::GET, "/v1/datasets"));
        assert!(!is_exempt_from_timeout(&Method::POST, "/v1/runs"));
    }
}
