//! Experiments, runs, metrics, logs, workers, the queue and `/metrics`, against the real app and
//! a fresh Postgres database per test. No scheduler runs here, so queued runs stay queued; where
//! a test needs a running run or scheduler output it writes the rows a scheduler would.

mod common;

use std::time::{Duration, Instant};

use common::{TestApp, spawn_app};
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

/// Registers a ready dataset the way ingestion leaves one, and returns its id.
async fn ready_dataset(app: &TestApp, kind: &str, status: &str) -> Uuid {
    let id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO datasets (id, name, kind, format, status, parts) \
         VALUES ($1, 'fashion', $2, 'idx', $3, $4)",
    )
    .bind(id)
    .bind(kind)
    .bind(status)
    .bind(json!([{"part": "images", "key": "k", "size_bytes": 1234, "sha256": "00"}]))
    .execute(&app.db)
    .await
    .expect("dataset row");
    id
}

fn spec_for(dataset: Uuid) -> Value {
    json!({"data": {"labeled": {"dataset_id": dataset}, "num_labeled": 40},
           "total_steps": 100, "algorithm": "supervised"})
}

async fn submit(app: &TestApp, body: &Value) -> (StatusCode, Value) {
    let response = app.post_json("/v1/runs", body).send().await.expect("sent");
    let status = response.status();
    (status, response.json().await.expect("JSON body"))
}

async fn get_json(app: &TestApp, path: &str) -> (StatusCode, Value) {
    let response = app.get(path).send().await.expect("sent");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn error_fields(problem: &Value) -> Vec<String> {
    problem["errors"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .map(|e| e["field"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn experiments_are_created_listed_and_deleted_only_when_empty() {
    let app = spawn_app().await;
    let body = json!({"name": "cifar sweep", "description": "lr sweep", "tags": ["cifar"]});

    let response = app
        .post_json("/v1/experiments", &body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let experiment: Value = response.json().await.unwrap();
    assert_eq!(experiment["tags"], json!(["cifar"]));
    assert_eq!(experiment["run_count"], 0);
    let id = experiment["id"].as_str().unwrap().to_owned();

    let again = app
        .post_json("/v1/experiments", &body)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::CONFLICT);
    let empty = app
        .post_json("/v1/experiments", &json!({"name": "  "}))
        .send()
        .await
        .unwrap();
    assert_eq!(empty.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let problem: Value = empty.json().await.unwrap();
    assert_eq!(error_fields(&problem), ["name"]);

    let (status, list) = get_json(&app, "/v1/experiments").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), 1);

    let dataset = ready_dataset(&app, "labeled", "ready").await;
    let run = json!({"spec": spec_for(dataset), "experiment_id": id});
    assert_eq!(submit(&app, &run).await.0, StatusCode::CREATED);
    let (_, fetched) = get_json(&app, &format!("/v1/experiments/{id}")).await;
    assert_eq!(fetched["run_count"], 1);
    let refused = app
        .delete(&format!("/v1/experiments/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::CONFLICT);

    sqlx::query("DELETE FROM runs")
        .execute(&app.db)
        .await
        .unwrap();
    let deleted = app
        .delete(&format!("/v1/experiments/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    let (status, _) = get_json(&app, &format!("/v1/experiments/{id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_submitted_run_is_queued_with_defaults_and_bad_ones_name_every_field() {
    let app = spawn_app().await;
    let dataset = ready_dataset(&app, "labeled", "ready").await;

    let (status, run) = submit(&app, &json!({"spec": spec_for(dataset), "name": "first"})).await;
    assert_eq!(status, StatusCode::CREATED, "{run}");
    assert_eq!(run["status"], "queued");
    assert_eq!(run["algorithm"], "supervised");
    assert_eq!(run["queue_position"], 1);
    assert_eq!(run["max_attempts"], 3);
    assert_eq!(run["attempt"], 0);
    assert_eq!(run["spec"]["batch_size"], 128, "defaults are filled in");
    assert_eq!(run["progress"]["total_steps"], 100);
    assert_eq!(run["progress"]["fraction"], 0.0);
    let id: Uuid = run["id"].as_str().unwrap().parse().unwrap();
    let queued_events: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM run_events WHERE run_id = $1 AND kind = 'status' \
         AND payload->>'status' = 'queued'",
    )
    .bind(id)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(queued_events, 1);

    let bad = json!({"spec": {"data": {"labeled": {"path": "x"}}, "batch_size": 0,
                              "teacher_optimizer": {"lr": -1}},
                     "max_attempts": 0});
    let (status, problem) = submit(&app, &bad).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        error_fields(&problem),
        [
            "spec.batch_size",
            "spec.data.labeled.format",
            "spec.teacher_optimizer.lr",
            "max_attempts"
        ]
    );

    let (status, problem) = submit(&app, &json!({"spec": {"data": {}, "mu": "x"}})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        error_fields(&problem)[0].starts_with("spec.data"),
        "{problem}"
    );
    let (status, problem) = submit(&app, &json!({"spec": spec_for(dataset), "colour": 1})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error_fields(&problem), ["colour"]);

    let response = app
        .request(reqwest::Method::POST, "/v1/runs")
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn datasets_a_spec_names_must_exist_be_ready_and_be_labeled_where_labels_are_needed() {
    let app = spawn_app().await;
    let ingesting = ready_dataset(&app, "labeled", "ingesting").await;
    let unlabeled = ready_dataset(&app, "unlabeled", "ready").await;
    let missing = Uuid::new_v4();

    let spec = json!({"data": {"labeled": {"dataset_id": unlabeled},
                               "unlabeled": {"dataset_id": ingesting},
                               "eval": {"dataset_id": missing}}});
    let experiment = Uuid::new_v4();
    let (status, problem) = submit(&app, &json!({"spec": spec, "experiment_id": experiment})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        error_fields(&problem),
        [
            "experiment_id",
            "spec.data.labeled.dataset_id",
            "spec.data.unlabeled.dataset_id",
            "spec.data.eval.dataset_id"
        ]
    );
    let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM runs")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(runs, 0, "nothing is stored for a rejected submission");
}

#[tokio::test]
async fn an_idempotency_key_returns_the_same_run_and_refuses_a_different_body() {
    let app = spawn_app().await;
    let dataset = ready_dataset(&app, "labeled", "ready").await;
    let body = json!({"spec": spec_for(dataset), "name": "once"});
    let send = |body: Value| {
        app.post_json("/v1/runs", &body)
            .header("Idempotency-Key", "key-1")
            .send()
    };

    let first = send(body.clone()).await.unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: Value = first.json().await.unwrap();
    let again = send(body.clone()).await.unwrap();
    assert_eq!(again.status(), StatusCode::OK);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["id"], first["id"]);

    let different = send(json!({"spec": spec_for(dataset), "name": "twice"}))
        .await
        .unwrap();
    assert_eq!(different.status(), StatusCode::CONFLICT);
    let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM runs")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(runs, 1);
}

#[tokio::test]
async fn runs_are_listed_newest_first_filtered_and_paged_by_cursor() {
    let app = spawn_app().await;
    let dataset = ready_dataset(&app, "labeled", "ready").await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let name = if i % 2 == 0 {
            format!("even_{i}")
        } else {
            format!("odd {i}")
        };
        let (_, run) = submit(&app, &json!({"spec": spec_for(dataset), "name": name})).await;
        ids.push(run["id"].as_str().unwrap().to_owned());
    }
    ids.reverse();

    let mut seen = Vec::new();
    let mut path = "/v1/runs?limit=2".to_owned();
    loop {
        let (status, page) = get_json(&app, &path).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 2);
        seen.extend(items.iter().map(|r| r["id"].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/runs?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen, ids, "every run once, newest first");

    let (_, page) = get_json(&app, "/v1/runs?q=ODD").await;
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    let (_, page) = get_json(&app, "/v1/runs?q=_").await;
    assert_eq!(
        page["items"].as_array().unwrap().len(),
        3,
        "_ matches itself only"
    );
    let (_, page) = get_json(&app, "/v1/runs?status=running,succeeded").await;
    assert_eq!(page["items"].as_array().unwrap().len(), 0);
    let (_, page) = get_json(&app, "/v1/runs?status=queued&algorithm=supervised").await;
    assert_eq!(page["items"].as_array().unwrap().len(), 5);

    let (status, problem) = get_json(&app, "/v1/runs?status=done&limit=0&cursor=zz").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error_fields(&problem), ["status", "limit", "cursor"]);
}

#[tokio::test]
async fn queue_position_follows_priority_then_age_and_cancel_and_retry_move_runs() {
    let app = spawn_app().await;
    let dataset = ready_dataset(&app, "labeled", "ready").await;
    let mut ids = Vec::new();
    for priority in [0, 5, 0] {
        let (_, run) = submit(
            &app,
            &json!({"spec": spec_for(dataset), "priority": priority}),
        )
        .await;
        ids.push(run["id"].as_str().unwrap().to_owned());
    }
    let position = |run: &Value| run["queue_position"].as_i64();

    let (_, queue) = get_json(&app, "/v1/queue").await;
    let order: Vec<&str> = queue
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(order, [&ids[1], &ids[0], &ids[2]]);
    let (_, last) = get_json(&app, &format!("/v1/runs/{}", ids[2])).await;
    assert_eq!(position(&last), Some(3));

    let cancelled = app
        .request(
            reqwest::Method::POST,
            &format!("/v1/runs/{}/cancel", ids[1]),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(cancelled.status(), StatusCode::OK);
    let cancelled: Value = cancelled.json().await.unwrap();
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(position(&cancelled), None);
    let (_, last) = get_json(&app, &format!("/v1/runs/{}", ids[2])).await;
    assert_eq!(position(&last), Some(2));
    let twice = app
        .request(
            reqwest::Method::POST,
            &format!("/v1/runs/{}/cancel", ids[1]),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(twice.status(), StatusCode::CONFLICT);

    let retried = app
        .request(reqwest::Method::POST, &format!("/v1/runs/{}/retry", ids[1]))
        .send()
        .await
        .unwrap();
    assert_eq!(retried.status(), StatusCode::OK);
    let retried: Value = retried.json().await.unwrap();
    assert_eq!(retried["status"], "queued");
    assert_eq!(retried["max_attempts"], 4);
    assert_eq!(position(&retried), Some(1));
    let queued_again = app
        .request(reqwest::Method::POST, &format!("/v1/runs/{}/retry", ids[1]))
        .send()
        .await
        .unwrap();
    assert_eq!(queued_again.status(), StatusCode::CONFLICT);
}

#[tokio::test]
async fn cancelling_a_running_run_asks_its_scheduler_through_notify() {
    let app = spawn_app().await;
    let dataset = ready_dataset(&app, "labeled", "ready").await;
    let (_, run) = submit(&app, &json!({"spec": spec_for(dataset)})).await;
    let id: Uuid = run["id"].as_str().unwrap().parse().unwrap();
    sqlx::query(
        "UPDATE runs SET status = 'running', attempt = 1, started_at = now(), \
         current_step = 25, phase = 'supervised', images_per_sec = 100, eta_secs = 7.5 \
         WHERE id = $1",
    )
    .bind(id)
    .execute(&app.db)
    .await
    .unwrap();
    let mut listener = sqlx::postgres::PgListener::connect_with(&app.db)
        .await
        .unwrap();
    listener.listen("mpl_cancel").await.unwrap();

    let (_, running) = get_json(&app, &format!("/v1/runs/{id}")).await;
    assert_eq!(running["progress"]["fraction"], 0.25);
    assert_eq!(running["progress"]["eta_secs"], 7.5);
    assert_eq!(running["progress"]["phase"], "supervised");
    let response = app
        .request(reqwest::Method::POST, &format!("/v1/runs/{id}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["status"], "running",
        "the scheduler finishes the cancel"
    );
    assert_eq!(body["cancel_requested"], true);

    let notification = tokio::time::timeout(Duration::from_secs(5), listener.recv())
        .await
        .expect("a cancel notification within 5 s")
        .unwrap();
    assert_eq!(notification.payload(), id.to_string());
}

#[tokio::test]
async fn attempts_logs_and_workers_show_what_schedulers_recorded() {
    let app = spawn_app().await;
    let dataset = ready_dataset(&app, "labeled", "ready").await;
    let (_, run) = submit(&app, &json!({"spec": spec_for(dataset)})).await;
    let id: Uuid = run["id"].as_str().unwrap().parse().unwrap();
    let worker = Uuid::new_v4();
    let setup = [
        "INSERT INTO workers (id, hostname, slots, devices) \
         VALUES ($2, 'gpu-1', 2, '[\"cuda:0\"]')",
        "UPDATE runs SET status = 'running', attempt = 2, worker_id = $2 WHERE id = $1",
        "INSERT INTO attempts (run_id, attempt, worker_id, ended_at, exit_reason, last_step) \
         VALUES ($1, 1, $2, now(), 'lease_expired', 40), ($1, 2, $2, NULL, NULL, 0)",
        "INSERT INTO run_events (run_id, attempt, kind, payload) VALUES \
         ($1, 1, 'log', '{\"stream\": \"stderr\", \"line\": \"first\"}'), \
         ($1, 2, 'progress', '{\"step\": 1}'), \
         ($1, 2, 'log', '{\"stream\": \"stderr\", \"line\": \"second\"}'), \
         ($1, 2, 'log', '{\"stream\": \"stderr\", \"line\": \"third\"}')",
    ];
    for sql in setup {
        sqlx::query(sql)
            .bind(id)
            .bind(worker)
            .execute(&app.db)
            .await
            .unwrap();
    }

    let (_, attempts) = get_json(&app, &format!("/v1/runs/{id}/attempts")).await;
    assert_eq!(attempts.as_array().unwrap().len(), 2);
    assert_eq!(attempts[0]["exit_reason"], "lease_expired");

    let (_, logs) = get_json(&app, &format!("/v1/runs/{id}/logs")).await;
    let lines: Vec<&str> = logs["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["line"].as_str().unwrap())
        .collect();
    assert_eq!(lines, ["first", "second", "third"]);
    let first_of_two = logs["lines"][1]["id"].as_i64().unwrap();
    let (_, logs) = get_json(
        &app,
        &format!("/v1/runs/{id}/logs?attempt=2&after={first_of_two}"),
    )
    .await;
    assert_eq!(logs["lines"].as_array().unwrap().len(), 1);
    assert_eq!(logs["lines"][0]["line"], "third");
    let (status, _) = get_json(&app, &format!("/v1/runs/{}/logs", Uuid::new_v4())).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (_, workers) = get_json(&app, "/v1/workers").await;
    assert_eq!(workers[0]["hostname"], "gpu-1");
    assert_eq!(workers[0]["alive"], true);
    assert_eq!(workers[0]["running_runs"], json!([id]));

    let text = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(text.status(), StatusCode::OK);
    let text = text.text().await.unwrap();
    assert!(text.contains("\nmpl_running_runs 1\n"), "{text}");
    assert!(text.contains("\nmpl_queue_depth 0\n"), "{text}");
    assert!(text.contains("\nmpl_lease_expiries_total 1\n"), "{text}");
    assert!(text.contains("\nmpl_workers_alive 1\n"), "{text}");
    assert!(
        text.contains("\nmpl_dataset_ingested_bytes_total 1234\n"),
        "{text}"
    );
    assert!(
        text.contains("mpl_http_responses_total{class=\"2xx\"}"),
        "{text}"
    );
}

#[tokio::test]
async fn a_million_point_series_is_downsampled_keeping_extremes_in_under_100_ms() {
    let app = spawn_app().await;
    let dataset = ready_dataset(&app, "labeled", "ready").await;
    let (_, run) = submit(&app, &json!({"spec": spec_for(dataset)})).await;
    let id: Uuid = run["id"].as_str().unwrap().parse().unwrap();
    // A noisy curve with one spike up and one down that downsampling must not lose.
    sqlx::query(
        "INSERT INTO metrics (run_id, name, step, value) \
         SELECT $1, 'student/loss', s, \
             CASE WHEN s = 777777 THEN 50 WHEN s = 123457 THEN -50 \
                  ELSE sin(s / 5000.0) + (s % 7) / 10.0 END \
         FROM generate_series(0, 999999) s",
    )
    .bind(id)
    .execute(&app.db)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO metrics (run_id, name, step, value) \
         SELECT $1, 'h', s, s FROM generate_series(0, 99, 3) s",
    )
    .bind(id)
    .execute(&app.db)
    .await
    .unwrap();

    let (_, names) = get_json(&app, &format!("/v1/runs/{id}/metrics")).await;
    assert_eq!(names["names"], json!(["h", "student/loss"]));

    let path = format!("/v1/runs/{id}/metrics?names=student/loss&points=1000");
    let mut best = Duration::MAX;
    let mut body = Value::Null;
    for _ in 0..5 {
        let started = Instant::now();
        let (status, response) = get_json(&app, &path).await;
        best = best.min(started.elapsed());
        assert_eq!(status, StatusCode::OK);
        body = response;
    }
    println!("1 000 000 points downsampled to 1 000: best of 5 requests {best:?}");
    let series = &body["series"][0];
    assert_eq!(series["total_points"], 1_000_000);
    let points = series["points"].as_array().unwrap();
    assert!(
        (500..=1000).contains(&points.len()),
        "{} points",
        points.len()
    );
    assert!(
        points.contains(&json!([777777, 50.0])),
        "the spike up is kept"
    );
    assert!(
        points.contains(&json!([123457, -50.0])),
        "the spike down is kept"
    );
    let steps: Vec<i64> = points.iter().map(|p| p[0].as_i64().unwrap()).collect();
    assert!(steps.windows(2).all(|w| w[0] < w[1]), "steps increase");
    assert!(best < Duration::from_millis(100), "took {best:?}");

    // A zoomed range is read point by point, and a short series comes back whole.
    let zoom = format!(
        "/v1/runs/{id}/metrics?names=student/loss,h&points=200&from_step=1000&to_step=1099"
    );
    let (_, zoomed) = get_json(&app, &zoom).await;
    assert_eq!(zoomed["series"][0]["total_points"], 100);
    assert_eq!(zoomed["series"][0]["points"].as_array().unwrap().len(), 100);
    assert_eq!(zoomed["series"][1]["total_points"], 0);
    let (_, short) = get_json(&app, &format!("/v1/runs/{id}/metrics?names=h")).await;
    assert_eq!(short["series"][0]["points"].as_array().unwrap().len(), 34);

    // A re-sent point overwrites its value and the rollups follow.
    sqlx::query(
        "INSERT INTO metrics (run_id, name, step, value) VALUES ($1, 'student/loss', 777777, 1) \
         ON CONFLICT (run_id, name, step) DO UPDATE SET value = EXCLUDED.value",
    )
    .bind(id)
    .execute(&app.db)
    .await
    .unwrap();
    let (_, after) = get_json(&app, &path).await;
    let points = after["series"][0]["points"].as_array().unwrap();
    assert!(
        !points.contains(&json!([777777, 50.0])),
        "the old spike is gone"
    );
    assert_eq!(after["series"][0]["total_points"], 1_000_000);
}
