//! The SSE stream of a run's events: replay in order, resume after an id, live delivery through
//! LISTEN/NOTIFY, and the end of the stream once the run is over.

mod common;

use std::time::Duration;

use common::{TestApp, spawn_app};
use futures::StreamExt;
use serde_json::{Value, json};
use uuid::Uuid;

/// One server-sent event as read off the wire.
#[derive(Debug, Clone, PartialEq)]
struct SseEvent {
    id: i64,
    event: String,
    data: Value,
}

/// Reads an SSE response until it ends or `want` events arrived; comments are skipped.
async fn read_events(response: reqwest::Response, want: usize) -> (Vec<SseEvent>, bool) {
    let mut events = Vec::new();
    let mut buffer = String::new();
    let mut body = response.bytes_stream();
    loop {
        if events.len() >= want {
            return (events, false);
        }
        let Some(chunk) = body.next().await else {
            return (events, true);
        };
        buffer.push_str(&String::from_utf8_lossy(&chunk.expect("stream chunk")));
        while let Some(end) = buffer.find("\n\n") {
            let frame: String = buffer.drain(..end + 2).collect();
            if let Some(event) = parse_frame(&frame) {
                events.push(event);
            }
        }
    }
}

fn parse_frame(frame: &str) -> Option<SseEvent> {
    let (mut id, mut event, mut data) = (None, None, None);
    for line in frame.lines() {
        if let Some(v) = line.strip_prefix("id:") {
            id = v.trim().parse().ok();
        } else if let Some(v) = line.strip_prefix("event:") {
            event = Some(v.trim().to_owned());
        } else if let Some(v) = line.strip_prefix("data:") {
            data = serde_json::from_str(v.trim()).ok();
        }
    }
    Some(SseEvent {
        id: id?,
        event: event?,
        data: data?,
    })
}

async fn new_run(app: &TestApp) -> Uuid {
    let id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO runs (id, algorithm, spec, total_steps, status, attempt) \
         VALUES ($1, 'mpl', '{}', 10, 'running', 1)",
    )
    .bind(id)
    .execute(&app.db)
    .await
    .expect("run row");
    id
}

/// Writes one event the way a scheduler does, with its notification.
async fn write_event(app: &TestApp, run: Uuid, kind: &str, payload: Value) -> i64 {
    let id = sqlx::query_scalar::<_, i64>(
        "INSERT INTO run_events (run_id, attempt, kind, payload) VALUES ($1, 1, $2, $3) \
         RETURNING id",
    )
    .bind(run)
    .bind(kind)
    .bind(payload)
    .fetch_one(&app.db)
    .await
    .expect("event row");
    sqlx::query("SELECT pg_notify('mpl_events', $1)")
        .bind(run.to_string())
        .execute(&app.db)
        .await
        .expect("notify");
    id
}

fn stream(app: &TestApp, run: Uuid) -> reqwest::RequestBuilder {
    app.get(&format!("/v1/runs/{run}/events"))
}

#[tokio::test]
async fn events_replay_in_order_resume_after_an_id_and_arrive_live() {
    let app = spawn_app().await;
    let run = new_run(&app).await;
    let other = new_run(&app).await;
    let mut ids = Vec::new();
    for step in 1..=3 {
        let payload = json!({"step": step, "values": {"h": step}});
        ids.push(write_event(&app, run, "metrics", payload).await);
        write_event(&app, other, "metrics", json!({"step": step})).await;
    }

    let response = stream(&app, run).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let (events, _) = read_events(response, 3).await;
    let got: Vec<i64> = events.iter().map(|e| e.id).collect();
    assert_eq!(got, ids, "this run's events only, in order");
    assert_eq!(events[2].event, "metrics");
    assert_eq!(events[2].data, json!({"step": 3, "values": {"h": 3}}));

    let resumed = stream(&app, run)
        .header("Last-Event-ID", ids[0].to_string())
        .send()
        .await
        .unwrap();
    let (events, _) = read_events(resumed, 2).await;
    assert_eq!(events.iter().map(|e| e.id).collect::<Vec<_>>(), &ids[1..]);

    // Connected and caught up; an event written now arrives through the notification, well
    // before the slow poll would find it.
    let live = stream(&app, run)
        .query(&[("after", ids[2])])
        .send()
        .await
        .unwrap();
    let writer = {
        let db = app.db.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let id: i64 = sqlx::query_scalar(
                "WITH e AS (INSERT INTO run_events (run_id, attempt, kind, payload) \
                 VALUES ($1, 1, 'log', '{\"stream\": \"stderr\", \"line\": \"hello\"}') \
                 RETURNING id) SELECT id FROM e",
            )
            .bind(run)
            .fetch_one(&db)
            .await
            .unwrap();
            sqlx::query("SELECT pg_notify('mpl_events', $1)")
                .bind(run.to_string())
                .execute(&db)
                .await
                .unwrap();
            id
        })
    };
    let (events, _) = tokio::time::timeout(Duration::from_secs(3), read_events(live, 1))
        .await
        .expect("the live event within 3 s");
    let written = writer.await.unwrap();
    assert_eq!(events[0].id, written);
    assert_eq!(events[0].event, "log");
    assert_eq!(events[0].data["line"], "hello");
}

#[tokio::test]
async fn the_stream_ends_once_the_run_is_over_and_its_events_are_sent() {
    let app = spawn_app().await;
    let run = new_run(&app).await;
    write_event(
        &app,
        run,
        "progress",
        json!({"step": 10, "total_steps": 10}),
    )
    .await;

    let response = stream(&app, run).send().await.unwrap();
    let reader = tokio::spawn(read_events(response, usize::MAX));
    tokio::time::sleep(Duration::from_millis(300)).await;
    sqlx::query("UPDATE runs SET status = 'succeeded', finished_at = now() WHERE id = $1")
        .bind(run)
        .execute(&app.db)
        .await
        .unwrap();
    write_event(&app, run, "status", json!({"status": "succeeded"})).await;

    let (events, ended) = tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .expect("the stream ends within 10 s")
        .unwrap();
    assert!(ended);
    let kinds: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(kinds, ["progress", "status"]);
    assert_eq!(events[1].data["status"], "succeeded");

    let missing = stream(&app, Uuid::new_v4()).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    let bad = stream(&app, run)
        .header("Last-Event-ID", "x")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 422);
}
