//! The api's configuration, read from `MPL_*` environment variables.
//!
//! The same variables configure the scheduler; this module parses the ones the api needs. Every
//! value has a default except the database URL, which the binary requires.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};

/// Default upload limit per dataset part: 8 GiB.
pub const DEFAULT_MAX_UPLOAD_BYTES: u64 = 8 * 1024 * 1024 * 1024;

/// Everything the api needs to start.
#[derive(Clone)]
pub struct Config {
    /// Postgres connection URL (`MPL_DATABASE_URL`).
    pub database_url: String,
    /// Object storage URL (`MPL_STORAGE_URL`, default `file://$MPL_DATA_DIR/objects`).
    pub storage_url: String,
    /// Local working directory (`MPL_DATA_DIR`, default `./.data`).
    pub data_dir: PathBuf,
    /// Address to listen on (`MPL_LISTEN`, default `127.0.0.1:8080`; port 0 picks a free one).
    pub listen: SocketAddr,
    /// The admin token given at start (`MPL_ADMIN_TOKEN`); generated on first start when unset.
    pub admin_token: Option<String>,
    /// The console's built static files (`MPL_CONSOLE_DIR`, default `console/dist`).
    pub console_dir: PathBuf,
    /// Largest dataset part accepted (`MPL_MAX_UPLOAD_BYTES`, default 8 GiB).
    pub max_upload_bytes: u64,
    /// Time limit of an ordinary request (`MPL_REQUEST_TIMEOUT_SECS`, default 30); uploads,
    /// downloads and event streams are exempt.
    pub request_timeout: Duration,
    /// Requests handled at once before new ones are turned away with 503
    /// (`MPL_MAX_CONCURRENT_REQUESTS`, default 512).
    pub max_concurrent_requests: usize,
    /// Sustained requests per second per token (`MPL_RATE_LIMIT_PER_SEC`, default 50).
    pub rate_limit_per_sec: f64,
    /// Requests a token may make in a burst (`MPL_RATE_LIMIT_BURST`, default 200).
    pub rate_limit_burst: f64,
    /// Whether `mpl-server` runs the scheduler in-process (`MPL_SCHEDULER`, default on).
    pub scheduler_enabled: bool,
    /// How long a scheduler's claim on a run lasts without a heartbeat (`MPL_LEASE_TTL_SECS`,
    /// default 30); a worker is shown as alive while its last heartbeat is this recent.
    pub lease_ttl_secs: u64,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("storage_url", &self.storage_url)
            .field("data_dir", &self.data_dir)
            .field("listen", &self.listen)
            .field("admin_token", &self.admin_token.as_ref().map(|_| "<set>"))
            .field("console_dir", &self.console_dir)
            .field("max_upload_bytes", &self.max_upload_bytes)
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// A configuration with every default, for the given database.
    pub fn with_defaults(database_url: impl Into<String>) -> Config {
        let data_dir = PathBuf::from("./.data");
        Config {
            database_url: database_url.into(),
            storage_url: default_storage_url(&data_dir),
            data_dir,
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_token: None,
            console_dir: PathBuf::from("console/dist"),
            max_upload_bytes: DEFAULT_MAX_UPLOAD_BYTES,
            request_timeout: Duration::from_secs(30),
            max_concurrent_requests: 512,
            rate_limit_per_sec: 50.0,
            rate_limit_burst: 200.0,
            scheduler_enabled: true,
            lease_ttl_secs: 30,
        }
    }

    /// Reads the configuration from the process environment.
    pub fn from_env() -> anyhow::Result<Config> {
        Config::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the configuration through `lookup` (an environment variable getter).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> anyhow::Result<Config> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let database_url = get("MPL_DATABASE_URL").context(
            "MPL_DATABASE_URL is not set; give a Postgres URL such as \
             postgres://postgres@127.0.0.1:5432/mpl",
        )?;
        let mut config = Config::with_defaults(database_url);
        if let Some(dir) = get("MPL_DATA_DIR") {
            config.data_dir = PathBuf::from(dir);
        }
        config.storage_url =
            get("MPL_STORAGE_URL").unwrap_or_else(|| default_storage_url(&config.data_dir));
        if let Some(listen) = get("MPL_LISTEN") {
            config.listen = parse("MPL_LISTEN", &listen)?;
        }
        config.admin_token = get("MPL_ADMIN_TOKEN");
        if let Some(dir) = get("MPL_CONSOLE_DIR") {
            config.console_dir = PathBuf::from(dir);
        }
        if let Some(v) = get("MPL_MAX_UPLOAD_BYTES") {
            config.max_upload_bytes = parse("MPL_MAX_UPLOAD_BYTES", &v)?;
        }
        if let Some(v) = get("MPL_REQUEST_TIMEOUT_SECS") {
            config.request_timeout = Duration::from_secs(parse("MPL_REQUEST_TIMEOUT_SECS", &v)?);
        }
        if let Some(v) = get("MPL_MAX_CONCURRENT_REQUESTS") {
            config.max_concurrent_requests = parse("MPL_MAX_CONCURRENT_REQUESTS", &v)?;
        }
        if let Some(v) = get("MPL_RATE_LIMIT_PER_SEC") {
            config.rate_limit_per_sec = parse("MPL_RATE_LIMIT_PER_SEC", &v)?;
        }
        if let Some(v) = get("MPL_RATE_LIMIT_BURST") {
            config.rate_limit_burst = parse("MPL_RATE_LIMIT_BURST", &v)?;
        }
        if let Some(v) = get("MPL_LEASE_TTL_SECS") {
            config.lease_ttl_secs = parse("MPL_LEASE_TTL_SECS", &v)?;
        }
        if let Some(v) = get("MPL_SCHEDULER") {
            config.scheduler_enabled = parse_flag("MPL_SCHEDULER", &v)?;
        }
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> anyhow::Result<()> {
        if self.rate_limit_per_sec.is_nan() || self.rate_limit_per_sec <= 0.0 {
            bail!("MPL_RATE_LIMIT_PER_SEC must be positive");
        }
        if self.rate_limit_burst < 1.0 {
            bail!("MPL_RATE_LIMIT_BURST must be at least 1");
        }
        if self.max_concurrent_requests == 0 {
            bail!("MPL_MAX_CONCURRENT_REQUESTS must be at least 1");
        }
        Ok(())
    }
}

fn default_storage_url(data_dir: &std::path::Path) -> String {
    format!("file://{}", data_dir.join("objects").display())
}

fn parse<T>(name: &str, value: &str) -> anyhow::Result<T>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    value
        .trim()
        .parse()
        .map_err(|e| anyhow::anyhow!("{name}={value:?} is not valid: {e}"))
}

fn parse_flag(name: &str, value: &str) -> anyhow::Result<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => bail!("{name}={value:?} is not valid: expected 1/0, true/false, yes/no or on/off"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn from_map(pairs: &[(&str, &str)]) -> anyhow::Result<Config> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn the_database_url_is_required() {
        let err = from_map(&[]).unwrap_err().to_string();
        assert!(err.contains("MPL_DATABASE_URL"), "{err}");
    }

    #[test]
    fn storage_defaults_to_a_directory_under_the_data_dir() {
        let config =
            from_map(&[("MPL_DATABASE_URL", "postgres://x"), ("MPL_DATA_DIR", "/d")]).unwrap();
        assert_eq!(config.storage_url, "file:///d/objects");
        assert_eq!(config.max_upload_bytes, DEFAULT_MAX_UPLOAD_BYTES);
        assert!(config.scheduler_enabled);
    }

    #[test]
    fn bad_values_name_the_variable() {
        let err = from_map(&[("MPL_DATABASE_URL", "x"), ("MPL_LISTEN", "nowhere")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("MPL_LISTEN"), "{err}");
        let err = from_map(&[("MPL_DATABASE_URL", "x"), ("MPL_SCHEDULER", "maybe")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("MPL_SCHEDULER"), "{err}");
    }
}
