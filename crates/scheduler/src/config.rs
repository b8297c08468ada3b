//! The scheduler's configuration, read from the same environment variables as the api.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};

/// Everything a scheduler needs to know to claim and supervise runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Postgres connection string (`MPL_DATABASE_URL`).
    pub database_url: String,
    /// Object storage URL (`MPL_STORAGE_URL`, default `file://$MPL_DATA_DIR/objects`).
    pub storage_url: String,
    /// Local state: dataset cache and attempt work directories (`MPL_DATA_DIR`).
    pub data_dir: PathBuf,
    /// The `trainer` executable (`MPL_TRAINER_BIN`, default: beside this executable).
    pub trainer_bin: PathBuf,
    /// How many runs this scheduler executes at once (`MPL_SLOTS`).
    pub slots: usize,
    /// Devices handed to the slots in turn (`MPL_DEVICES`, e.g. `cuda:0,cuda:1`).
    pub devices: Vec<String>,
    /// How long a claimed run stays ours without a heartbeat (`MPL_LEASE_TTL_SECS`).
    pub lease_ttl: Duration,
    /// How often the worker row and the leases are renewed (`MPL_HEARTBEAT_SECS`).
    pub heartbeat: Duration,
    /// How long a trainer may take to stop after SIGTERM before SIGKILL
    /// (`MPL_CANCEL_GRACE_SECS`).
    pub cancel_grace: Duration,
    /// Fallback poll of the queue and the reaper when no notification arrives.
    pub poll_interval: Duration,
}

impl Config {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> anyhow::Result<Config> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the configuration through `lookup` (the environment, or a map in tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> anyhow::Result<Config> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());

        let database_url = get("MPL_DATABASE_URL").context("MPL_DATABASE_URL is not set")?;
        let data_dir = PathBuf::from(get("MPL_DATA_DIR").unwrap_or_else(|| "./.data".into()));
        let data_dir = absolute(data_dir)?;
        let storage_url = match get("MPL_STORAGE_URL") {
            Some(url) => url,
            None => format!("file://{}", data_dir.join("objects").display()),
        };
        let trainer_bin = match get("MPL_TRAINER_BIN") {
            Some(path) => PathBuf::from(path),
            None => default_trainer_bin()?,
        };
        let devices = parse_devices(get("MPL_DEVICES").as_deref().unwrap_or("cpu"))?;

        Ok(Config {
            database_url,
            storage_url,
            data_dir,
            trainer_bin,
            slots: parse_number(&get, "MPL_SLOTS", 1)? as usize,
            devices,
            lease_ttl: Duration::from_secs(parse_number(&get, "MPL_LEASE_TTL_SECS", 30)?),
            heartbeat: Duration::from_secs(parse_number(&get, "MPL_HEARTBEAT_SECS", 10)?),
            cancel_grace: Duration::from_secs(parse_number(&get, "MPL_CANCEL_GRACE_SECS", 30)?),
            poll_interval: Duration::from_secs(5),
        })
        .and_then(Config::checked)
    }

    /// Rejects combinations that cannot work (a lease shorter than the heartbeat renewing it).
    pub fn checked(self) -> anyhow::Result<Config> {
        if self.heartbeat.is_zero() {
            bail!("MPL_HEARTBEAT_SECS must be at least 1");
        }
        if self.lease_ttl <= self.heartbeat {
            bail!(
                "MPL_LEASE_TTL_SECS ({}) must be longer than MPL_HEARTBEAT_SECS ({}), \
                 or every lease expires between two heartbeats",
                self.lease_ttl.as_secs(),
                self.heartbeat.as_secs()
            );
        }
        if self.devices.is_empty() {
            bail!("MPL_DEVICES must name at least one device");
        }
        Ok(self)
    }

    /// The device of slot `slot`: devices are dealt to the slots in turn.
    pub fn device_for_slot(&self, slot: usize) -> &str {
        &self.devices[slot % self.devices.len()]
    }

    /// Where downloaded dataset files are kept, by content hash.
    pub fn cache_dir(&self) -> PathBuf {
        self.data_dir.join("cache")
    }

    /// Where attempt work directories are created.
    pub fn work_dir(&self) -> PathBuf {
        self.data_dir.join("work")
    }
}

fn parse_number(
    get: &impl Fn(&str) -> Option<String>,
    name: &str,
    default: u64,
) -> anyhow::Result<u64> {
    match get(name) {
        None => Ok(default),
        Some(text) => text
            .trim()
            .parse::<u64>()
            .with_context(|| format!("{name} must be a whole number, got {text:?}")),
    }
}

fn parse_devices(text: &str) -> anyhow::Result<Vec<String>> {
    let mut devices = Vec::new();
    for device in text.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let valid = device == "cpu"
            || device
                .strip_prefix("cuda:")
                .is_some_and(|n| n.parse::<usize>().is_ok());
        if !valid {
            bail!("MPL_DEVICES: {device:?} is not a device (use cpu or cuda:N)");
        }
        devices.push(device.to_string());
    }
    Ok(devices)
}

fn absolute(path: PathBuf) -> anyhow::Result<PathBuf> {
    if path.is_absolute() {
        return Ok(path);
    }
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    Ok(cwd.join(path))
}

fn default_trainer_bin() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot locate the current executable")?;
    let dir = exe
        .parent()
        .context("the current executable has no parent directory")?;
    Ok(dir.join("trainer"))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn config_from(pairs: &[(&str, &str)]) -> anyhow::Result<Config> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|name| map.get(name).cloned())
    }

    #[test]
    fn defaults_follow_the_documented_values() {
        let config = config_from(&[
            ("MPL_DATABASE_URL", "postgres://x"),
            ("MPL_DATA_DIR", "/srv/mpl"),
        ])
        .unwrap();
        assert_eq!(config.slots, 1);
        assert_eq!(config.devices, ["cpu"]);
        assert_eq!(config.lease_ttl, Duration::from_secs(30));
        assert_eq!(config.heartbeat, Duration::from_secs(10));
        assert_eq!(config.cancel_grace, Duration::from_secs(30));
        assert_eq!(config.storage_url, "file:///srv/mpl/objects");
        assert_eq!(config.cache_dir(), PathBuf::from("/srv/mpl/cache"));
    }

    #[test]
    fn devices_are_dealt_to_slots_in_turn() {
        let config = config_from(&[
            ("MPL_DATABASE_URL", "postgres://x"),
            ("MPL_SLOTS", "3"),
            ("MPL_DEVICES", "cuda:0, cuda:1"),
        ])
        .unwrap();
        let dealt: Vec<&str> = (0..3).map(|s| config.device_for_slot(s)).collect();
        assert_eq!(dealt, ["cuda:0", "cuda:1", "cuda:0"]);
    }

    #[test]
    fn bad_values_name_the_variable() {
        let err = config_from(&[("MPL_DATABASE_URL", "x"), ("MPL_SLOTS", "two")]).unwrap_err();
        assert!(err.to_string().contains("MPL_SLOTS"), "{err}");
        let err = config_from(&[("MPL_DATABASE_URL", "x"), ("MPL_DEVICES", "tpu")]).unwrap_err();
        assert!(err.to_string().contains("tpu"), "{err}");
        let err = config_from(&[
            ("MPL_DATABASE_URL", "x"),
            ("MPL_LEASE_TTL_SECS", "5"),
            ("MPL_HEARTBEAT_SECS", "5"),
        ])
        .unwrap_err();
        assert!(err.to_string().contains("MPL_LEASE_TTL_SECS"), "{err}");
        let err = config_from(&[]).unwrap_err();
        assert!(err.to_string().contains("MPL_DATABASE_URL"), "{err}");
    }
}
