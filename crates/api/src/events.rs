//! The event stream of a run: `GET /v1/runs/{id}/events` as server-sent events.
//!
//! A stream first replays the run's `run_events` rows after the client's last event id
//! (`Last-Event-ID` header, or `?after=`), then follows new rows as they are written. New rows
//! are announced by `NOTIFY mpl_events, '<run_id>'`; one `LISTEN` connection per server hears
//! them and fans them out to every open stream through a broadcast channel, and a slow poll
//! covers any notification lost while that connection was being re-established. A stream ends
//! once its run has reached a terminal status and every event written before it was sent.

use std::convert::Infallible;
use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::{Stream, StreamExt, stream};
use mpl_protocol::FieldError;
use serde::Deserialize;
use serde_json::Value;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::{OnceCell, broadcast};
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::app::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::runs::{RunStatus, ensure_run_exists};

/// The channel on which writers of `run_events` announce new rows (payload: the run id).
pub const EVENTS_CHANNEL: &str = "mpl_events";
/// Rows sent per database read.
const BATCH_ROWS: i64 = 500;
/// How often a stream looks for new rows without being told.
const SLOW_POLL: Duration = Duration::from_secs(5);
/// How often it looks when the server cannot listen for notifications.
const FAST_POLL: Duration = Duration::from_secs(1);
/// Interval of keep-alive comments on an idle stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Notifications buffered per stream before a slow one is told it lagged.
const FAN_OUT_CAPACITY: usize = 1_024;

/// The event routes, to be nested under `/v1`. The router carries its own [`EventHub`], which
/// starts listening on the first stream request.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(stream_events))
        .layer(Extension(EventHub::default()))
}

/// Fans the server's single `LISTEN mpl_events` connection out to every open stream.
#[derive(Clone, Default)]
pub struct EventHub {
    sender: Arc<OnceCell<broadcast::Sender<Uuid>>>,
}

impl EventHub {
    /// A receiver of run ids with new events; the nil id means "look again, whatever your run".
    /// Starts the listener on first use; `None` when it cannot be started (streams then poll).
    pub async fn subscribe(&self, db: &PgPool) -> Option<broadcast::Receiver<Uuid>> {
        let started = self
            .sender
            .get_or_try_init(|| start_listener(db.clone(), Arc::downgrade(&self.sender)))
            .await;
        match started {
            Ok(sender) => Some(sender.subscribe()),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for run events; streams will poll");
                None
            }
        }
    }
}

/// Connects the listener and spawns the task that forwards its notifications. The task ends
/// when the pool is closed or, at the next notification, when the hub is gone.
async fn start_listener(
    db: PgPool,
    hub: Weak<OnceCell<broadcast::Sender<Uuid>>>,
) -> Result<broadcast::Sender<Uuid>, sqlx::Error> {
    let mut listener = PgListener::connect_with(&db).await?;
    listener.listen(EVENTS_CHANNEL).await?;
    let (sender, _) = broadcast::channel(FAN_OUT_CAPACITY);

    tokio::spawn(async move {
        loop {
            let run_id = match listener.try_recv().await {
                Ok(Some(notification)) => Uuid::parse_str(notification.payload()).ok(),
                // The connection was lost and is re-established by the next call; anything
                // announced meanwhile was missed, so every stream looks again.
                Ok(None) => Some(Uuid::nil()),
                Err(sqlx::Error::PoolClosed) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "run event listener failed; retrying");
                    tokio::time::sleep(FAST_POLL).await;
                    Some(Uuid::nil())
                }
            };
            let Some(hub) = hub.upgrade() else { break };
            if let (Some(sender), Some(run_id)) = (hub.get(), run_id) {
                // No receivers is not an error: nobody is watching right now.
                let _ = sender.send(run_id);
            }
        }
        tracing::debug!("run event listener stopped");
    });
    Ok(sender)
}

/// Where a stream starts.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StreamQuery {
    /// Send only events with a larger id (the `Last-Event-ID` header takes precedence).
    pub after: Option<String>,
}

/// Streams a run's events as server-sent events: `status`, `progress`, `metrics`, `eval`,
/// `checkpoint`, `log` and `attempt`, each with its `run_events` id as the SSE id and its payload
/// as JSON data.
#[utoipa::path(get, path = "/runs/{id}/events", tag = "runs",
    params(
        ("id" = Uuid, Path, description = "Run id"),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id"),
        StreamQuery,
    ),
    responses(
        (status = 200, description = "An event stream", content_type = "text/event-stream",
            body = String),
        (status = 404, description = "No such run"),
        (status = 422, description = "The event id is not a number"),
    ))]
async fn stream_events(
    State(state): State<AppState>,
    _caller: Caller,
    Extension(hub): Extension<EventHub>,
    Path(run_id): Path<Uuid>,
    headers: HeaderMap,
    Query(query): Query<StreamQuery>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let after = resume_point(&headers, query.after.as_deref())?;
    ensure_run_exists(&state.db, run_id).await?;
    // Subscribe before the first read, so that nothing written after it goes unnoticed.
    let wake = hub.subscribe(&state.db).await;

    let follower = Follower {
        db: state.db.clone(),
        run_id,
        after,
        wake,
    };
    let events = stream::unfold(follower, |mut follower| async move {
        let batch = follower.next_batch().await?;
        Some((stream::iter(batch.into_iter().map(Ok)), follower))
    })
    .flatten();
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

/// The id after which to start: `Last-Event-ID` if sent, else `?after=`, else the beginning.
fn resume_point(headers: &HeaderMap, after: Option<&str>) -> ApiResult<i64> {
    let (field, text) = match headers.get("last-event-id") {
        Some(value) => ("Last-Event-ID", value.to_str().unwrap_or("?")),
        None => ("after", after.unwrap_or("0")),
    };
    let text = text.trim();
    if text.is_empty() {
        return Ok(0);
    }
    text.parse::<i64>()
        .ok()
        .filter(|id| *id >= 0)
        .ok_or_else(|| {
            ApiError::Validation(vec![FieldError {
                field: field.into(),
                message: format!("{text:?} is not an event id"),
            }])
        })
}

/// One client's position in one run's events.
struct Follower {
    db: PgPool,
    run_id: Uuid,
    /// The id of the last event sent.
    after: i64,
    wake: Option<broadcast::Receiver<Uuid>>,
}

/// One row of a read: the run's status and, unless there is none, one event after the cursor.
#[derive(sqlx::FromRow)]
struct EventRow {
    status: String,
    id: Option<i64>,
    kind: Option<String>,
    payload: Option<Value>,
}

impl Follower {
    /// The next events to send, waiting for them if there are none yet; `None` ends the stream
    /// (the run is over and drained, or is gone, or the database failed: the client resumes).
    async fn next_batch(&mut self) -> Option<Vec<Event>> {
        loop {
            let rows = match self.read().await {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::warn!(run_id = %self.run_id, error = %e, "event stream read failed");
                    return None;
                }
            };
            let first = rows.first()?;
            let ended = RunStatus::parse(&first.status).is_none_or(RunStatus::is_terminal);
            let events: Vec<Event> = rows
                .into_iter()
                .filter_map(|row| self.take_event(row))
                .collect();
            if !events.is_empty() {
                return Some(events);
            }
            if ended {
                return None;
            }
            self.wait().await;
        }
    }

    /// Reads the status and the next events in one statement, hence from one snapshot: when the
    /// status is terminal, every event written before the status change is in the same result.
    async fn read(&self) -> Result<Vec<EventRow>, sqlx::Error> {
        sqlx::query_as::<_, EventRow>(
            "SELECT r.status, e.id, e.kind, e.payload \
             FROM runs r LEFT JOIN LATERAL ( \
                 SELECT id, kind, payload FROM run_events \
                 WHERE run_id = r.id AND id > $2 ORDER BY id LIMIT $3) e ON TRUE \
             WHERE r.id = $1 ORDER BY e.id",
        )
        .bind(self.run_id)
        .bind(self.after)
        .bind(BATCH_ROWS)
        .fetch_all(&self.db)
        .await
    }

    fn take_event(&mut self, row: EventRow) -> Option<Event> {
        let (id, kind, payload) = (row.id?, row.kind?, row.payload?);
        self.after = id;
        Some(
            Event::default()
                .id(id.to_string())
                .event(kind)
                .data(payload.to_string()),
        )
    }

    /// Waits until this run may have new events: a notification for it (or for every run), a
    /// lagging receiver, or the poll interval.
    async fn wait(&mut self) {
        let Some(wake) = &mut self.wake else {
            tokio::time::sleep(FAST_POLL).await;
            return;
        };
        let deadline = tokio::time::sleep(SLOW_POLL);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                woken = wake.recv() => match woken {
                    Ok(id) if id == self.run_id || id.is_nil() => return,
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(_)) => return,
                    Err(broadcast::error::RecvError::Closed) => {
                        self.wake = None;
                        return;
                    }
                },
                _ = &mut deadline => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_event_id_header_wins_over_the_query() {
        let mut headers = HeaderMap::new();
        assert_eq!(resume_point(&headers, None).unwrap(), 0);
        assert_eq!(resume_point(&headers, Some("7")).unwrap(), 7);
        headers.insert("last-event-id", "42".parse().unwrap());
        assert_eq!(resume_point(&headers, Some("7")).unwrap(), 42);
    }

    #[test]
    fn a_malformed_event_id_is_named() {
        let err = resume_point(&HeaderMap::new(), Some("abc")).unwrap_err();
        let ApiError::Validation(fields) = err else {
            panic!("expected a validation error, got {err:?}");
        };
        assert_eq!(fields[0].field, "after");
    }
}
