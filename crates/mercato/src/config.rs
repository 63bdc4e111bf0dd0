//! The one typed configuration, built once at start-up (by the CLI or by tests).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    /// Where the private PostgreSQL and demo files live when no database is given.
    pub data_dir: PathBuf,
    /// The owner's connection (runs migrations). `None`: start a private cluster.
    pub database_url: Option<String>,
    /// The platform admin token. `None`: generate one for this run.
    pub admin_token: Option<String>,
    /// Size of the app role's connection pool.
    pub max_connections: u32,
    /// How long a checkout's reservation holds its units.
    pub checkout_ttl: Duration,
    /// A pending checkout untouched this long is resumed by the recovery worker.
    pub recovery_grace: Duration,
    /// How often the expiry and recovery workers look for work.
    pub worker_interval: Duration,
    /// The sandbox provider's delay for `pm_card_slow` and `pm_card_timeout`.
    pub payment_delay: Duration,
    /// Share of legacy-order reads that also read the other shape and compare (0-100).
    pub shadow_percent: u8,
}

impl Config {
    pub fn new(listen: SocketAddr) -> Self {
        Config {
            listen,
            data_dir: PathBuf::from(".mercato"),
            database_url: None,
            admin_token: None,
            max_connections: 32,
            checkout_ttl: Duration::from_secs(900),
            recovery_grace: Duration::from_secs(30),
            worker_interval: Duration::from_secs(1),
            payment_delay: Duration::from_secs(2),
            shadow_percent: 10,
        }
    }
}
