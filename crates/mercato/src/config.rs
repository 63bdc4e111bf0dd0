//! The one typed configuration. `mercato serve` fills it from flags and
//! environment variables (clap, below); tests and benchmarks start from
//! `Config::new` and change fields. Defaults are written once, here, and
//! `App::build` validates every configuration the same way (`Config::validate`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9464";
pub const DEFAULT_DATA_DIR: &str = ".mercato";
/// `--admin-token off`: no admin token at all.
pub const ADMIN_TOKEN_OFF: &str = "off";
const DEFAULT_STORE_DOMAIN: &str = "shop.localhost";
const DEFAULT_DB_POOL: u32 = 32;
const DEFAULT_CHECKOUT_TTL: &str = "900";
const DEFAULT_RECOVERY_GRACE: &str = "30";
const DEFAULT_WORKER_INTERVAL: &str = "1";
const DEFAULT_ANALYTICS_INTERVAL: &str = "2";
const DEFAULT_PAYMENT_DELAY: &str = "2";
const DEFAULT_ANOMALY_INTERVAL: &str = "60";
const DEFAULT_WEBHOOK_TIMEOUT: &str = "10";
const DEFAULT_WEBHOOK_DISABLE_AFTER: i32 = 100;
const DEFAULT_SHADOW_PERCENT: u8 = 10;
/// The shortest admin token accepted: 32 characters (a generated one has 52).
pub const MIN_ADMIN_TOKEN_CHARS: usize = 32;
/// The longest any configured duration may be: one day.
const MAX_SECONDS: f64 = 86_400.0;

#[derive(Clone, Debug, clap::Args)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "MERCATO_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Address of `/metrics`, apart from the API: what it shows (every
    /// merchant's sales, the platform's traffic) is for the operator's
    /// Prometheus, not for the public listener. Port 0: any free port.
    #[arg(long, env = "MERCATO_METRICS_LISTEN", default_value = DEFAULT_METRICS_LISTEN)]
    pub metrics_listen: SocketAddr,
    /// Directory of the private PostgreSQL cluster and demo files (used when no database is given).
    #[arg(long, env = "MERCATO_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// Where the analytics marts (Parquet) are written and read; default:
    /// `analytics` in the data directory.
    #[arg(long, env = "MERCATO_ANALYTICS_DIR")]
    pub analytics_dir: Option<PathBuf>,
    /// Object storage the marts are mirrored to, in the same layout, for
    /// engines elsewhere: `s3://bucket/prefix` (credentials, region and
    /// endpoint from `AWS_*`) or `file:///directory`. Unset: local only.
    #[arg(long, env = "MERCATO_ANALYTICS_STORE")]
    pub analytics_store: Option<String>,
    /// Seconds between analytics exports of each cell (0.1 to 86400; 0: no
    /// export in `serve`, run `mercato analytics export`): the marts trail
    /// the orders by about this much.
    #[arg(long, env = "MERCATO_ANALYTICS_INTERVAL", default_value = DEFAULT_ANALYTICS_INTERVAL, value_parser = seconds)]
    pub analytics_interval: Duration,
    /// The schema owner's URL (runs migrations); the service itself connects
    /// as role `mercato_app`. Unset: a private cluster in --data-dir.
    #[command(flatten)]
    pub database: DatabaseUrlArg,
    /// The address people reach Mercato at, for the links in its e-mail
    /// (invitations): `https://shop-admin.example.com`. Unset: `http://` and
    /// the listen address.
    #[arg(long, env = "MERCATO_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// The domain shops are served under by host name: `{slug}.{domain}`
    /// reaches the store API of merchant `slug` (`*.shop.localhost` resolves
    /// to this machine in browsers and curl).
    #[arg(long, env = "MERCATO_STORE_DOMAIN", default_value = DEFAULT_STORE_DOMAIN)]
    pub store_domain: String,
    /// Platform admin token; generated and printed when unset; `off`: none
    /// (operators log in with their accounts; `POST /v1/operators` made them).
    #[arg(long, env = "MERCATO_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Size of the service's database connection pool (1 to 1000).
    #[arg(long = "db-pool", env = "MERCATO_DB_POOL", default_value_t = DEFAULT_DB_POOL)]
    pub max_connections: u32,
    /// Seconds a checkout's reservation holds its units (1 to 86400).
    #[arg(long, env = "MERCATO_CHECKOUT_TTL", default_value = DEFAULT_CHECKOUT_TTL, value_parser = seconds)]
    pub checkout_ttl: Duration,
    /// Seconds after which a pending checkout is resumed by the recovery worker (0 to 86400).
    #[arg(long, env = "MERCATO_RECOVERY_GRACE", default_value = DEFAULT_RECOVERY_GRACE, value_parser = seconds)]
    pub recovery_grace: Duration,
    /// Seconds between background-worker passes: reservation expiry, checkout recovery (0.01 to 86400).
    #[arg(long, env = "MERCATO_WORKER_INTERVAL", default_value = DEFAULT_WORKER_INTERVAL, value_parser = seconds)]
    pub worker_interval: Duration,
    /// Seconds the sandbox takes for pm_card_slow and hangs for pm_card_timeout (0 to 86400).
    #[arg(long, env = "MERCATO_PAYMENT_DELAY", default_value = DEFAULT_PAYMENT_DELAY, value_parser = seconds)]
    pub payment_delay: Duration,
    /// Seconds between pricing anomaly checks of every merchant with orders in the last hour
    /// (each merchant's last hour against its 7 days before; 1 to 86400).
    #[arg(long, env = "MERCATO_ANOMALY_INTERVAL", default_value = DEFAULT_ANOMALY_INTERVAL, value_parser = seconds)]
    pub anomaly_interval: Duration,
    /// Percentage of migrating reads that also read the other shape and compare (0 to 100).
    #[arg(long, env = "MERCATO_SHADOW_PERCENT", default_value_t = DEFAULT_SHADOW_PERCENT)]
    pub shadow_percent: u8,
    /// Allow webhook receivers on internal addresses (loopback, private, link-local, …), for
    /// development against a local receiver; their answers are never kept. Off unless given.
    #[arg(long, env = "MERCATO_WEBHOOKS_ALLOW_INTERNAL")]
    pub webhooks_allow_internal: bool,
    /// Seconds a webhook receiver has to answer (0.1 to 86400).
    #[arg(long, env = "MERCATO_WEBHOOK_TIMEOUT", default_value = DEFAULT_WEBHOOK_TIMEOUT, value_parser = seconds)]
    pub webhook_timeout: Duration,
    /// Delays before each webhook attempt (Svix's schedule; tests shorten it).
    #[arg(skip = svix_schedule())]
    pub webhook_schedule: Vec<Duration>,
    /// NATS server to publish every event to (JetStream stream MERCATO, subjects
    /// mercato.<merchant>.<type>); unset: no bus.
    #[arg(long, env = "MERCATO_NATS_URL")]
    pub nats_url: Option<String>,
    /// Failed webhook attempts in a row after which an endpoint is disabled.
    #[arg(skip = DEFAULT_WEBHOOK_DISABLE_AFTER)]
    pub webhook_disable_after: i32,
    /// Redis holding the rate limits' buckets, so several instances share one limit
    /// (e.g. redis://127.0.0.1:6379); unset: each process keeps its own.
    #[arg(long, env = "MERCATO_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// SMTP server for customers' e-mail (smtp://host:port); unset: `.eml` files
    /// under <data-dir>/mail.
    #[arg(long, env = "MERCATO_SMTP_URL")]
    pub smtp_url: Option<String>,
    /// The sender of customers' e-mail.
    #[arg(long, env = "MERCATO_MAIL_FROM", default_value = DEFAULT_MAIL_FROM)]
    pub mail_from: String,
    /// Another database a merchant can live in: `NAME=postgres://owner@host/db`
    /// (repeatable; comma-separated in the environment). Each is migrated at
    /// start-up like the main one, which is the cell `main`.
    #[arg(long = "cell", env = "MERCATO_CELLS", value_delimiter = ',', value_parser = cell_spec, hide_env_values = true)]
    pub cells: Vec<CellSpec>,
}

/// A cell of the configuration: its name and its schema owner's URL.
#[derive(Clone, PartialEq, Eq)]
pub struct CellSpec {
    pub name: String,
    pub url: String,
}

impl std::fmt::Debug for CellSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password.
        write!(f, "CellSpec({})", self.name)
    }
}

/// A cell's name: 1-32 lower-case letters, digits, `-` or `_`, not `main`.
pub fn cell_name(name: &str) -> Result<&str, String> {
    let name = name.trim();
    if name.is_empty()
        || name.len() > 32
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
    {
        return Err(format!(
            "cell name {name:?} must be 1-32 lower-case letters, digits, - or _"
        ));
    }
    if name == MAIN_CELL {
        return Err("the main database is the cell \"main\" already".into());
    }
    Ok(name)
}

/// `NAME=URL`, the name as `cell_name` wants it.
pub fn cell_spec(raw: &str) -> Result<CellSpec, String> {
    let (name, url) = raw
        .split_once('=')
        .ok_or_else(|| "must be NAME=postgres://…".to_owned())?;
    let name = cell_name(name)?;
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(format!("cell {name}: the URL must start with postgres://"));
    }
    Ok(CellSpec {
        name: name.to_owned(),
        url: url.trim().to_owned(),
    })
}

/// The name of the main database as a cell: every merchant's home until moved.
pub const MAIN_CELL: &str = "main";

/// Delays before each webhook retry, Svix's schedule: the first attempt at
/// once, then 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h (eight attempts over
/// about a day).
pub fn svix_schedule() -> Vec<Duration> {
    [0, 5, 300, 1_800, 7_200, 18_000, 36_000, 36_000]
        .into_iter()
        .map(Duration::from_secs)
        .collect()
}

const DEFAULT_MAIL_FROM: &str = "Mercato <no-reply@mercato.local>";

/// A configuration that cannot work, named by its flag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--{flag} {message}")]
pub struct ConfigError {
    pub flag: &'static str,
    pub message: String,
}

/// A number of seconds (fractions allowed), as the command line gives it.
pub fn seconds(raw: &str) -> Result<Duration, String> {
    let value: f64 = raw
        .trim()
        .parse()
        .map_err(|_| format!("{raw:?} is not a number of seconds"))?;
    Duration::try_from_secs_f64(value).map_err(|_| format!("{raw:?} is not a number of seconds"))
}

impl Config {
    /// The analytics directory: `--analytics-dir`, or inside the data directory.
    pub fn analytics_dir(&self) -> PathBuf {
        self.analytics_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("analytics"))
    }

    /// The defaults, listening on `listen`.
    pub fn new(listen: SocketAddr) -> Self {
        let default = |raw: &str| seconds(raw).expect("default durations parse");
        Config {
            listen,
            // A service on any free port (tests, benchmarks: several at
            // once) has its metrics on one too.
            metrics_listen: if listen.port() == 0 {
                SocketAddr::new(listen.ip(), 0)
            } else {
                DEFAULT_METRICS_LISTEN
                    .parse()
                    .expect("the default metrics address parses")
            },
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            analytics_dir: None,
            analytics_store: None,
            analytics_interval: default(DEFAULT_ANALYTICS_INTERVAL),
            database: DatabaseUrlArg::default(),
            admin_token: None,
            public_url: None,
            store_domain: DEFAULT_STORE_DOMAIN.to_owned(),
            max_connections: DEFAULT_DB_POOL,
            checkout_ttl: default(DEFAULT_CHECKOUT_TTL),
            recovery_grace: default(DEFAULT_RECOVERY_GRACE),
            worker_interval: default(DEFAULT_WORKER_INTERVAL),
            payment_delay: default(DEFAULT_PAYMENT_DELAY),
            anomaly_interval: default(DEFAULT_ANOMALY_INTERVAL),
            webhooks_allow_internal: false,
            nats_url: None,
            smtp_url: None,
            redis_url: None,
            mail_from: DEFAULT_MAIL_FROM.to_owned(),
            webhook_timeout: default(DEFAULT_WEBHOOK_TIMEOUT),
            webhook_schedule: svix_schedule(),
            webhook_disable_after: DEFAULT_WEBHOOK_DISABLE_AFTER,
            shadow_percent: DEFAULT_SHADOW_PERCENT,
            cells: Vec::new(),
        }
    }

    /// Checks ranges; the first value out of range is the error.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |flag, message: String| Err(ConfigError { flag, message });
        if !(1..=1000).contains(&self.max_connections) {
            return fail("db-pool", "must be from 1 to 1000 connections".into());
        }
        let analytics = self.analytics_interval.as_secs_f64();
        if analytics != 0.0 && !(0.1..=86_400.0).contains(&analytics) {
            return fail(
                "analytics-interval",
                "must be 0 (off) or from 0.1 to 86400 seconds".into(),
            );
        }
        for (flag, value, min) in [
            ("checkout-ttl", self.checkout_ttl, 1.0),
            ("recovery-grace", self.recovery_grace, 0.0),
            ("worker-interval", self.worker_interval, 0.01),
            ("payment-delay", self.payment_delay, 0.0),
            ("anomaly-interval", self.anomaly_interval, 1.0),
            ("webhook-timeout", self.webhook_timeout, 0.1),
        ] {
            let secs = value.as_secs_f64();
            if !(min..=MAX_SECONDS).contains(&secs) {
                return fail(flag, format!("must be from {min} to {MAX_SECONDS} seconds"));
            }
        }
        if let Some(token) = self.admin_token.as_ref().filter(|t| *t != ADMIN_TOKEN_OFF) {
            let chars = token.chars().count();
            if chars < MIN_ADMIN_TOKEN_CHARS || token.chars().any(char::is_whitespace) {
                return fail(
                    "admin-token",
                    format!(
                        "must be at least {MIN_ADMIN_TOKEN_CHARS} characters with no spaces (got {chars}); unset it to have one generated"
                    ),
                );
            }
        }
        if self.shadow_percent > 100 {
            return fail("shadow-percent", "must be from 0 to 100".into());
        }
        for (i, cell) in self.cells.iter().enumerate() {
            if self.cells[..i].iter().any(|c| c.name == cell.name) {
                return fail("cell", format!("{:?} is given twice", cell.name));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        config: Config,
    }

    #[test]
    fn the_cli_defaults_are_the_library_defaults() {
        let parsed = Cli::try_parse_from(["mercato"]).expect("defaults parse");
        let mut config = parsed.config;
        // The test runner may set these in the environment; they have no default.
        config.database.database_url = None;
        config.admin_token = None;
        let expected = Config::new(config.listen);
        assert_eq!(config.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(format!("{config:?}"), format!("{expected:?}"));
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn out_of_range_values_name_their_flag() {
        let mut config = Config::new("127.0.0.1:0".parse().unwrap());
        config.max_connections = 0;
        assert_eq!(config.validate().unwrap_err().flag, "db-pool");
        let mut config = Config::new("127.0.0.1:0".parse().unwrap());
        config.worker_interval = Duration::ZERO;
        assert_eq!(config.validate().unwrap_err().flag, "worker-interval");
        let mut config = Config::new("127.0.0.1:0".parse().unwrap());
        config.checkout_ttl = Duration::from_secs(86_401);
        assert_eq!(config.validate().unwrap_err().flag, "checkout-ttl");
        for short in ["", "x", &"y".repeat(MIN_ADMIN_TOKEN_CHARS - 1)] {
            let mut config = Config::new("127.0.0.1:0".parse().unwrap());
            config.admin_token = Some(short.to_owned());
            let err = config.validate().unwrap_err();
            assert_eq!(err.flag, "admin-token");
            assert!(!err.to_string().contains(short) || short.is_empty());
        }
        assert!(Cli::try_parse_from(["mercato", "--recovery-grace", "soon"]).is_err());
    }
}

/// Where a command (`remediate`, `tenants`, `analytics`) finds the main
/// database and the other cells: the same flags as `serve`'s, declared once.
#[derive(Debug, clap::Args)]
pub struct CommandDatabaseArgs {
    #[command(flatten)]
    pub database: DatabaseUrlArg,
    /// Where `mercato serve` keeps its embedded cluster (and its files, such as e-mails).
    #[arg(
        long,
        env = "MERCATO_DATA_DIR",
        default_value = DEFAULT_DATA_DIR,
        global = true
    )]
    pub data_dir: std::path::PathBuf,
    /// The cells, as `serve` is given them: `NAME=postgres://…` (repeatable).
    #[arg(long = "cell", env = "MERCATO_CELLS", value_delimiter = ',', value_parser = cell_spec, hide_env_values = true, global = true)]
    pub cells: Vec<CellSpec>,
}

/// `--database-url` (`DATABASE_URL`): the PostgreSQL URL of the schema owner,
/// declared once for `serve` and every command. Unset: a private cluster (the
/// embedded one of `--data-dir`; a scratch one for benchmarks).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DatabaseUrlArg {
    /// PostgreSQL URL of the schema owner (superuser or BYPASSRLS for the
    /// commands that read across merchants); unset: a private cluster.
    #[arg(
        long = "database-url",
        env = "DATABASE_URL",
        hide_env_values = true,
        global = true
    )]
    pub database_url: Option<String>,
}
