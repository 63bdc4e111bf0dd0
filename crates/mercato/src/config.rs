//! The one typed configuration, built once at start-up (by the CLI or by tests).

use std::net::SocketAddr;
use std::path::PathBuf;

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
}

impl Config {
    pub fn new(listen: SocketAddr) -> Self {
        Config {
            listen,
            data_dir: PathBuf::from(".mercato"),
            database_url: None,
            admin_token: None,
            max_connections: 32,
        }
    }
}
