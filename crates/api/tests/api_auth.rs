//! Authentication, scopes, token management, problem documents, request ids and limits, against
//! the real app and a fresh database.

mod common;

use common::{spawn_app, spawn_app_with};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn problem(response: reqwest::Response) -> Value {
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(content_type, "application/problem+json");
    response.json().await.expect("problem JSON")
}

#[tokio::test]
async fn a_request_without_a_token_is_refused_with_a_problem_document() {
    let app = spawn_app().await;

    let response = app
        .client
        .get(app.url("/v1/experiments"))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    let body = problem(response).await;
    assert_eq!(body["status"], 401);
    assert_eq!(body["type"], "urn:mpl:problem:unauthorized");
}

#[tokio::test]
async fn a_bad_or_malformed_token_is_refused() {
    let app = spawn_app().await;

    let bad = app
        .client
        .get(app.url("/v1/experiments"))
        .bearer_auth("mpl_not_a_real_token")
        .send()
        .await
        .unwrap();
    let basic = app
        .client
        .get(app.url("/v1/experiments"))
        .header("authorization", "Basic dXNlcjpwYXNz")
        .send()
        .await
        .unwrap();

    assert_eq!(bad.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(basic.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_revoked_token_stops_working() {
    let app = spawn_app().await;
    let token = app.create_token("write").await;
    let listed: Value = app
        .get("/v1/tokens")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["scope"] == "write")
        .map(|t| t["id"].as_str().unwrap().to_owned())
        .expect("the new token is listed");
    let before = app
        .client
        .get(app.url("/v1/experiments"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(before.status(), StatusCode::OK);

    let revoked = app
        .delete(&format!("/v1/tokens/{id}"))
        .send()
        .await
        .unwrap();
    let after = app
        .client
        .get(app.url("/v1/experiments"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();

    assert_eq!(revoked.status(), StatusCode::NO_CONTENT);
    assert_eq!(after.status(), StatusCode::UNAUTHORIZED);
    let listed: Value = app
        .get("/v1/tokens")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let entry = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == id)
        .unwrap();
    assert!(entry["revoked_at"].is_string());
    assert!(
        entry.get("token").is_none(),
        "a listing must not carry secrets"
    );
}

#[tokio::test]
async fn a_read_only_token_reads_but_cannot_write() {
    let app = spawn_app().await;
    let token = app.create_token("read").await;

    let read = app
        .client
        .get(app.url("/v1/experiments"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let write = app
        .client
        .post(app.url("/v1/experiments"))
        .bearer_auth(&token)
        .json(&json!({"name": "x"}))
        .send()
        .await
        .unwrap();

    assert_eq!(read.status(), StatusCode::OK);
    assert_eq!(write.status(), StatusCode::FORBIDDEN);
    assert_eq!(problem(write).await["status"], 403);
}

#[tokio::test]
async fn only_admin_tokens_manage_tokens() {
    let app = spawn_app().await;
    let write = app.create_token("write").await;

    let response = app
        .client
        .post(app.url("/v1/tokens"))
        .bearer_auth(&write)
        .json(&json!({"name": "sneaky", "scope": "admin"}))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn token_requests_are_validated_field_by_field() {
    let app = spawn_app().await;

    let bad_scope = app
        .post_json("/v1/tokens", &json!({"name": "x", "scope": "root"}))
        .send()
        .await
        .unwrap();
    let blank_name = app
        .post_json("/v1/tokens", &json!({"name": "  ", "scope": "read"}))
        .send()
        .await
        .unwrap();
    let malformed = app
        .request(reqwest::Method::POST, "/v1/tokens")
        .header("content-type", "application/json")
        .body("{\"name\": ")
        .send()
        .await
        .unwrap();

    assert_eq!(bad_scope.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem(bad_scope).await["errors"][0]["field"], "scope");
    assert_eq!(blank_name.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem(blank_name).await["errors"][0]["field"], "name");
    assert_eq!(malformed.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn the_secret_is_stored_only_as_a_hash() {
    let app = spawn_app().await;
    let token = app.create_token("write").await;

    let stored: Vec<Vec<u8>> = sqlx::query_scalar("SELECT token_hash FROM api_tokens")
        .fetch_all(&app.db)
        .await
        .unwrap();

    assert!(stored.iter().all(|h| h.len() == 32));
    assert!(stored.contains(&mpl_api::auth::hash_secret(&token).to_vec()));
    assert!(!stored.iter().any(|h| h == token.as_bytes()));
}

#[tokio::test]
async fn open_routes_need_no_token_and_every_response_has_a_request_id() {
    let app = spawn_app().await;

    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    let openapi = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    let docs = app.client.get(app.url("/api-docs")).send().await.unwrap();
    let given = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .unwrap();

    assert_eq!(health.status(), StatusCode::OK);
    assert!(!health.headers()["x-request-id"].is_empty());
    assert_eq!(ready.status(), StatusCode::OK);
    assert_eq!(openapi.status(), StatusCode::OK);
    assert_eq!(docs.status(), StatusCode::OK);
    assert!(docs.text().await.unwrap().contains("/openapi.json"));
    assert_eq!(given.headers()["x-request-id"], "trace-me-42");
}

#[tokio::test]
async fn unknown_api_routes_are_404_problems_and_the_console_page_explains_itself() {
    let app = spawn_app().await;

    let unknown = app.get("/v1/no-such-thing").send().await.unwrap();
    let root = app.client.get(app.url("/")).send().await.unwrap();

    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    assert_eq!(problem(unknown).await["status"], 404);
    assert_eq!(root.status(), StatusCode::OK);
    assert!(root.text().await.unwrap().contains("console is not built"));
}

#[tokio::test]
async fn the_console_is_served_with_a_fallback_to_its_index() {
    let app = spawn_app().await;
    let console = app.data_dir.path().join("console");
    std::fs::create_dir_all(console.join("assets")).unwrap();
    std::fs::write(console.join("index.html"), "<html>console index</html>").unwrap();
    std::fs::write(console.join("assets/app.js"), "console.log(1)").unwrap();

    let asset = app
        .client
        .get(app.url("/assets/app.js"))
        .send()
        .await
        .unwrap();
    let deep_link = app.client.get(app.url("/runs/123")).send().await.unwrap();
    let escape = app
        .client
        .get(app.url("/assets/..%2f..%2f..%2fetc%2fpasswd"))
        .send()
        .await
        .unwrap();

    assert_eq!(asset.text().await.unwrap(), "console.log(1)");
    assert_eq!(
        deep_link.text().await.unwrap(),
        "<html>console index</html>"
    );
    assert!(!escape.text().await.unwrap().contains("root:"));
}

#[tokio::test]
async fn a_token_over_its_rate_is_told_when_to_retry() {
    let app = spawn_app_with(|config| {
        config.rate_limit_per_sec = 0.5;
        config.rate_limit_burst = 3.0;
    })
    .await;
    let other_token = app.create_token("read").await;

    let mut statuses = Vec::new();
    let mut retry_after = Vec::new();
    for _ in 0..4 {
        let response = app.get("/v1/tokens").send().await.unwrap();
        statuses.push(response.status());
        if let Some(value) = response.headers().get("retry-after") {
            retry_after.push(value.to_str().unwrap().parse::<u64>().unwrap());
        }
    }
    let other = app
        .client
        .get(app.url("/v1/experiments"))
        .bearer_auth(&other_token)
        .send()
        .await
        .unwrap();

    // The token creation took one request of the admin's burst of three.
    assert_eq!(&statuses[..2], &[StatusCode::OK; 2]);
    assert_eq!(&statuses[2..], &[StatusCode::TOO_MANY_REQUESTS; 2]);
    assert!(
        retry_after.iter().all(|s| (1..=2).contains(s)),
        "{retry_after:?}"
    );
    assert_eq!(
        other.status(),
        StatusCode::OK,
        "each token has its own bucket"
    );
}

#[tokio::test]
async fn a_json_body_over_the_limit_is_refused_with_413() {
    let app = spawn_app().await;
    let huge_name = "x".repeat(mpl_api::limits::MAX_JSON_BODY_BYTES + 10);

    let response = app
        .post_json("/v1/tokens", &json!({"name": huge_name, "scope": "read"}))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(problem(response).await["status"], 413);
}

#[tokio::test]
async fn the_server_turns_requests_away_when_all_its_slots_are_busy() {
    let app = spawn_app_with(|config| config.max_concurrent_requests = 1).await;
    let permit = app
        .state
        .limits
        .take_slot()
        .await
        .expect("the only slot is free");

    let refused = app.get("/v1/tokens").send().await.unwrap();
    drop(permit);
    let accepted = app.get("/v1/tokens").send().await.unwrap();

    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(refused.headers().contains_key("retry-after"));
    assert_eq!(accepted.status(), StatusCode::OK);
}
