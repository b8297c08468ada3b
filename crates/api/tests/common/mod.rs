//! Shared test harness: a fresh Postgres database per test, the real app on port 0 with local
//! storage in a temporary directory, an admin token, and a reqwest client.
//!
//! The database is created from `MPL_TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`) and dropped when the [`TestApp`] is dropped,
//! even when the test panics. Set `TEST_LOG=1` to see the app's logs.

#![allow(dead_code)]

use std::sync::Once;

use mpl_api::{AppState, Config};
use reqwest::{Client, Method, RequestBuilder};
use serde_json::Value;
use sqlx::{Connection, Executor, PgConnection, PgPool};
use tempfile::TempDir;
use uuid::Uuid;

/// The admin token every test app starts with.
pub const ADMIN_TOKEN: &str = "mpl_test_admin_token_0123456789abcdef";

/// A running app on its own database.
pub struct TestApp {
    /// `http://127.0.0.1:<port>`.
    pub address: String,
    /// The port the app listens on.
    pub port: u16,
    /// A plain client (no default headers).
    pub client: Client,
    /// The admin token's secret.
    pub admin_token: String,
    /// A pool on the test database.
    pub db: PgPool,
    /// The app's state (storage, config).
    pub state: AppState,
    /// Holds the app's data directory (storage, console) until the test ends.
    pub data_dir: TempDir,
    /// The database URL of this test's database.
    pub database_url: String,
    db_name: String,
    maintenance_url: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

/// The server URL tests create databases from.
pub fn maintenance_url() -> String {
    std::env::var("MPL_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// `url` with its database name replaced by `db_name`.
pub fn with_database(url: &str, db_name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let server = match base.rfind('/') {
        Some(i) if i > "postgres://".len() => &base[..i],
        _ => base,
    };
    match query {
        Some(query) => format!("{server}/{db_name}?{query}"),
        None => format!("{server}/{db_name}"),
    }
}

/// Creates an empty database and returns its name and URL.
pub async fn create_database() -> (String, String) {
    let maintenance = maintenance_url();
    let db_name = format!("test_{}", Uuid::new_v4().simple());
    let mut conn = PgConnection::connect(&maintenance)
        .await
        .expect("Postgres is reachable at MPL_TEST_DATABASE_URL");
    conn.execute(format!(r#"CREATE DATABASE "{db_name}""#).as_str())
        .await
        .expect("the test database can be created");
    let url = with_database(&maintenance, &db_name);
    (db_name, url)
}

fn init_tracing() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var("TEST_LOG").is_ok() {
            let _ = tracing_subscriber_init();
        }
    });
}

fn tracing_subscriber_init() -> Result<(), ()> {
    // The api's binary sets up logging; tests use the same subscriber when asked to.
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned());
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .finish();
    tracing::subscriber::set_global_default(subscriber).map_err(|_| ())
}

/// Starts the app with the test defaults.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts the app after `configure` has adjusted the test configuration.
pub async fn spawn_app_with(configure: impl FnOnce(&mut Config)) -> TestApp {
    init_tracing();
    let (db_name, database_url) = create_database().await;
    let data_dir = tempfile::tempdir().expect("temp dir");

    let mut config = Config::with_defaults(database_url.clone());
    config.listen = "127.0.0.1:0".parse().expect("valid address");
    config.data_dir = data_dir.path().to_owned();
    config.storage_url = format!("file://{}", data_dir.path().join("objects").display());
    config.console_dir = data_dir.path().join("console");
    config.admin_token = Some(ADMIN_TOKEN.to_owned());
    config.scheduler_enabled = false;
    config.rate_limit_per_sec = 10_000.0;
    config.rate_limit_burst = 10_000.0;
    configure(&mut config);

    let app = mpl_api::build(config).await.expect("the app builds");
    let port = app.port();
    let state = app.state();
    let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let signal = async {
            let _ = stopped.await;
        };
        if let Err(err) = app.run_until(signal).await {
            eprintln!("the test app stopped with an error: {err:#}");
        }
    });

    TestApp {
        address: format!("http://127.0.0.1:{port}"),
        port,
        client: Client::new(),
        admin_token: ADMIN_TOKEN.to_owned(),
        db: state.db.clone(),
        state,
        data_dir,
        database_url,
        db_name,
        maintenance_url: maintenance_url(),
        shutdown: Some(shutdown),
    }
}

impl TestApp {
    /// The absolute URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    /// A request to `path` with the admin token.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, self.url(path))
            .bearer_auth(&self.admin_token)
    }

    /// A GET with the admin token.
    pub fn get(&self, path: &str) -> RequestBuilder {
        self.request(Method::GET, path)
    }

    /// A POST of `body` as JSON with the admin token.
    pub fn post_json(&self, path: &str, body: &Value) -> RequestBuilder {
        self.request(Method::POST, path).json(body)
    }

    /// A DELETE with the admin token.
    pub fn delete(&self, path: &str) -> RequestBuilder {
        self.request(Method::DELETE, path)
    }

    /// Creates a token with `scope` and returns its secret.
    pub async fn create_token(&self, scope: &str) -> String {
        let response = self
            .post_json(
                "/v1/tokens",
                &serde_json::json!({"name": format!("{scope} token"), "scope": scope}),
            )
            .send()
            .await
            .expect("token request sent");
        assert_eq!(response.status(), 201, "creating a {scope} token failed");
        let body: Value = response.json().await.expect("token JSON");
        body["token"].as_str().expect("token secret").to_owned()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        let maintenance = self.maintenance_url.clone();
        let db_name = self.db_name.clone();
        // Drop runs inside the test's runtime, which cannot be blocked on; drop the database
        // from a thread with its own runtime.
        let dropper = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                if let Ok(mut conn) = PgConnection::connect(&maintenance).await {
                    let sql = format!(r#"DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)"#);
                    let _ = conn.execute(sql.as_str()).await;
                }
            });
        });
        let _ = dropper.join();
    }
}
