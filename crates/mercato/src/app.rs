//! Wiring: config → database → router → listener. Production, tests and
//! benchmarks all start Mercato through `App::build`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use localpg::LocalPg;
use rand::RngCore;
use tokio::net::TcpListener;

use crate::cells::{Cell, Cells};
use crate::checkout::{self, Checkout};
use crate::config::{Config, ConfigError};
use crate::db::{self, Db, DbError};
use crate::demo::{self, DemoError};
use crate::inventory::{self, Inventory};
use crate::legacy_orders;
use crate::payments::SandboxProvider;
use crate::routes;
use crate::state::{AppState, CellServices, Services};
use pgshift::ReadSwitch;
use std::collections::HashMap;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("private PostgreSQL in {dir}: {source}")]
    LocalPg { dir: String, source: localpg::Error },
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Demo(#[from] DemoError),
}

impl From<db::PrivateClusterError> for StartError {
    fn from(err: db::PrivateClusterError) -> Self {
        match err {
            db::PrivateClusterError::LocalPg { dir, source } => StartError::LocalPg { dir, source },
            db::PrivateClusterError::Db(e) => StartError::Db(e),
        }
    }
}

/// Where the database came from, for the start-up banner.
#[derive(Debug)]
pub enum DatabaseSource {
    External,
    Private { data_dir: String, port: u16 },
}

/// Implementations of the service's seams plugged in when the app is built,
/// beside the built-in ones; merchants choose among them by name.
#[derive(Clone, Default)]
pub struct Plugins {
    /// Fulfilment providers (`manual` is built in).
    pub fulfillment: Vec<Arc<dyn checkout::FulfillmentProvider>>,
}

pub struct App {
    config: Config,
    cells: Cells,
    cell_services: HashMap<String, Arc<CellServices>>,
    moves: Arc<crate::cells::driver::MoveDriver>,
    webhooks: crate::events::worker::DeliveryConfig,
    listener: TcpListener,
    metrics_listener: TcpListener,
    router: Router,
    pub addr: SocketAddr,
    /// Where `/metrics` is served (`--metrics-listen`).
    pub metrics_addr: SocketAddr,
    pub db: Db,
    /// The schema owner's connection URL (for migrations and tools).
    pub owner_url: String,
    pub admin_token: String,
    /// Whether this run made the admin token up (then, and only then, it is printed).
    pub admin_token_generated: bool,
    /// The suspended merchants, kept current while serving.
    suspended: crate::tenancy::Suspended,
    /// The demo merchant's key, when this run seeded (or found) the demo.
    pub demo_api_key: Option<String>,
    /// The demo owner's (e-mail, password), when this run seeded (or found) the demo.
    pub demo_login: Option<(String, String)>,
    pub database: DatabaseSource,
    /// Keeps the private cluster alive as long as the app; stops it on drop.
    _localpg: Option<LocalPg>,
    _embedded_cells: Vec<crate::cells::embedded::EmbeddedCell>,
}

impl App {
    pub async fn build(config: Config) -> Result<App, StartError> {
        App::build_with(config, Plugins::default()).await
    }

    /// `build`, with implementations plugged in beside the built-in ones.
    pub async fn build_with(mut config: Config, plugins: Plugins) -> Result<App, StartError> {
        config.validate()?;
        // A store URL that cannot be used stops start-up, named by its flag.
        analytics_mirror(&config).map_err(|e| ConfigError {
            flag: "analytics-store",
            message: match e {
                crate::analytics::mirror::MirrorError::Url { reason, .. } => reason,
                other => other.to_string(),
            },
        })?;
        // Bind first: a taken port should fail before anything else starts.
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| StartError::Listen {
                    addr: config.listen,
                    source,
                })?;
        let addr = listener.local_addr().map_err(|source| StartError::Listen {
            addr: config.listen,
            source,
        })?;
        let metrics_listener =
            TcpListener::bind(config.metrics_listen)
                .await
                .map_err(|source| StartError::Listen {
                    addr: config.metrics_listen,
                    source,
                })?;
        let metrics_addr = metrics_listener
            .local_addr()
            .map_err(|source| StartError::Listen {
                addr: config.metrics_listen,
                source,
            })?;
        let (owner_url, localpg) = match &config.database.database_url {
            Some(url) => (url.clone(), None),
            None => {
                let pg = db::start_private_cluster(&config.data_dir).await?;
                (pg.url("mercato"), Some(pg))
            }
        };
        let db = db::prepare(&owner_url, config.max_connections).await?;
        // Embedded, the cells `mercato cells add` made start with the main cluster.
        let embedded_cells = match &localpg {
            Some(_) => crate::cells::embedded::open(&config.data_dir, false).await?,
            None => Vec::new(),
        };
        for cell in &embedded_cells {
            if config.cells.iter().any(|c| c.name == cell.spec.name) {
                return Err(ConfigError {
                    flag: "cell",
                    message: format!(
                        "names {:?}, an embedded cell of the data directory already",
                        cell.spec.name
                    ),
                }
                .into());
            }
            config.cells.push(cell.spec.clone());
        }
        let demo_api_key = match localpg {
            Some(_) => Some(demo::seed(&db, &config.data_dir).await?),
            None => None,
        };
        let demo_login = match localpg {
            Some(_) => Some(demo::seed_login(&db, &config.data_dir).await?),
            None => None,
        };
        let database = match &localpg {
            Some(pg) => DatabaseSource::Private {
                data_dir: config.data_dir.display().to_string(),
                port: pg.port(),
            },
            None => DatabaseSource::External,
        };
        let admin_token_generated = config.admin_token.is_none();
        let admin_token = config
            .admin_token
            .clone()
            .unwrap_or_else(generate_admin_token);
        let mut cells = vec![Cell {
            name: crate::cells::MAIN.to_owned(),
            db: db.clone(),
        }];
        let owner_options = |url: &str| -> Result<sqlx::postgres::PgConnectOptions, StartError> {
            url.parse().map_err(|e| StartError::Db(DbError::Url(e)))
        };
        let mut cell_owners = Vec::new();
        for spec in &config.cells {
            let cell_db = db::prepare(&spec.url, config.max_connections).await?;
            cells.push(Cell {
                name: spec.name.clone(),
                db: cell_db,
            });
            cell_owners.push((spec.name.clone(), owner_options(&spec.url)?));
        }
        // Moves run as the mover role on every cell, never as the owner.
        let moves = crate::cells::driver::MoveDriver::new(crate::cells::mover::Pools::of_owners(
            &owner_options(&owner_url)?,
            cell_owners,
            4,
        ));
        let cell_services: HashMap<String, Arc<CellServices>> = cells
            .iter()
            .map(|c| {
                let services = cell_services(&c.db, &config, &plugins);
                (c.name.clone(), Arc::new(services))
            })
            .collect();
        let cells = Cells::new(db.app.clone(), cells);
        if config.nats_url.is_some() {
            crate::events::enable_bus();
        }
        let webhooks = crate::events::worker::DeliveryConfig {
            schedule: config.webhook_schedule.clone(),
            timeout: config.webhook_timeout,
            disable_after: config.webhook_disable_after.max(1),
            // Only by the explicit flag: the embedded database is the README's
            // default run, and a merchant key must not reach this machine's services.
            allow_internal: config.webhooks_allow_internal,
            ..Default::default()
        };
        let suspended = crate::tenancy::Suspended::default();
        suspended
            .refresh(&db.app)
            .await
            .map_err(|e| StartError::Db(DbError::Sql(e)))?;
        let state = AppState::new(Services {
            suspended: suspended.clone(),
            storefront: crate::storefront::Storefront::new(&config.store_domain),
            webhooks: webhooks.clone(),
            db: db.clone(),
            // `off`: the platform's routes take operators' sessions only.
            admin_token: (admin_token != crate::config::ADMIN_TOKEN_OFF)
                .then(|| Arc::from(admin_token.as_str())),
            logins: Default::default(),
            public_url: Arc::from(
                config
                    .public_url
                    .clone()
                    .unwrap_or_else(|| format!("http://{addr}"))
                    .trim_end_matches('/'),
            ),
            keys: Default::default(),
            auth_failures: Default::default(),
            cells: cells.clone(),
            cell_services: cell_services.clone(),
            order_facts: Arc::new(checkout::PricedOrderFacts),
            moves: moves.clone(),
            analytics: crate::analytics::Layout::new(config.analytics_dir()),
            limiter: crate::quotas::Limiter::new(config.redis_url.as_deref()).map_err(|e| {
                ConfigError {
                    flag: "redis-url",
                    message: format!("is not a Redis URL: {e}"),
                }
            })?,
        });
        Ok(App {
            cells,
            cell_services,
            moves,
            webhooks,
            config,
            listener,
            metrics_listener,
            metrics_addr,
            router: routes::router(state),
            addr,
            db,
            owner_url,
            admin_token,
            admin_token_generated,
            suspended,
            demo_api_key,
            demo_login,
            database,
            _localpg: localpg,
            _embedded_cells: embedded_cells,
        })
    }

    /// The cells this instance serves, `main` first.
    pub fn cell_names(&self) -> Vec<String> {
        self.cells.all().iter().map(|c| c.name.clone()).collect()
    }

    /// Serves (and runs the background workers) until `shutdown` resolves, then
    /// finishes in-flight requests.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let App {
            config,
            cells,
            cell_services,
            moves,
            webhooks,
            listener,
            metrics_listener,
            router,
            _localpg,
            _embedded_cells,
            suspended,
            db,
            ..
        } = self;
        let mut workers = vec![
            tokio::spawn(cells.clone().follow_directory()),
            tokio::spawn(suspended.clone().follow(db.app.clone())),
            tokio::spawn(moves.run()),
            tokio::spawn(async move {
                if let Err(err) = axum::serve(metrics_listener, routes::metrics_router()).await {
                    tracing::error!(error = %err, "the metrics listener stopped");
                }
            }),
        ];
        // Every cell's background work runs on that cell's pools.
        for cell in cells.all() {
            if let Some(services) = cell_services.get(&cell.name) {
                workers.extend(cell_workers(
                    &cells, &cell, services, &config, &webhooks, &suspended,
                ));
            }
        }
        // The client's address, for the limit on failed authentications.
        let router = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await;
        for worker in workers {
            worker.abort();
        }
        served
        // `_localpg` drops here, after the last request: the cluster stops cleanly.
    }
}

/// A cell's services, bound to its pools.
fn cell_services(db: &Db, config: &Config, plugins: &Plugins) -> CellServices {
    let inventory = Inventory::new(db.app.clone());
    let checkout = Checkout {
        pool: db.app.clone(),
        inventory: inventory.clone(),
        payments: Arc::new(SandboxProvider::new(db.app.clone(), config.payment_delay)),
        fulfillment: checkout::FulfillmentProviders::new(&plugins.fulfillment),
        reservation_ttl_seconds: config.checkout_ttl.as_secs().max(1) as i64,
        acting: None,
    };
    CellServices {
        inventory,
        checkout,
        migration: Arc::new(ReadSwitch::new(
            db.app.clone(),
            legacy_orders::MIGRATION,
            config.shadow_percent.min(100),
        )),
    }
}

/// The background loops of one cell: reservation expiry, checkout recovery,
/// webhook delivery, anomaly checks, customers' mail, the analytics export,
/// the event bus, the shadow-read tally of the legacy-orders migration.
fn cell_workers(
    cells: &Cells,
    cell: &Cell,
    services: &CellServices,
    config: &Config,
    webhooks: &crate::events::worker::DeliveryConfig,
    suspended: &crate::tenancy::Suspended,
) -> Vec<tokio::task::JoinHandle<()>> {
    let db = &cell.db;
    let mut workers = vec![
        tokio::spawn(flush_shadow_counts(
            services.migration.clone(),
            config.worker_interval,
        )),
        tokio::spawn(inventory::worker::release_expired_reservations(
            db.worker.clone(),
            config.worker_interval,
        )),
        tokio::spawn(checkout::worker::recover_stalled_checkouts(
            services.checkout.clone(),
            db.worker.clone(),
            config.worker_interval,
            config.recovery_grace,
        )),
        tokio::spawn(crate::events::worker::deliver_webhooks(
            db.app.clone(),
            db.worker.clone(),
            webhooks.clone(),
            suspended.clone(),
        )),
        tokio::spawn(crate::pricing::rollout::watch_anomalies(
            db.app.clone(),
            db.worker.clone(),
            Arc::new(checkout::PricedOrderFacts),
            config.anomaly_interval,
            crate::pricing::rollout::Periods::default(),
        )),
    ];
    match crate::mail::Transport::from_config(
        config.smtp_url.as_deref(),
        config.data_dir.join("mail"),
        &config.mail_from,
    ) {
        Ok(transport) => workers.push(tokio::spawn(crate::mail::send_every_merchants_mail(
            cells.clone(),
            cell.name.clone(),
            db.worker.clone(),
            transport,
            config.worker_interval,
            suspended.clone(),
        ))),
        Err(err) => tracing::error!(error = %err, "customers' e-mail is not sent"),
    }
    if !config.analytics_interval.is_zero() {
        // `validate` has refused a bad store already.
        let mirror = analytics_mirror(config).unwrap_or_else(|err| {
            tracing::error!(error = %err, "the marts are not mirrored");
            None
        });
        workers.push(tokio::spawn(crate::analytics::export_continuously(
            cell.name.clone(),
            db.worker.clone(),
            crate::analytics::Layout::new(config.analytics_dir()),
            mirror,
            config.analytics_interval,
        )));
    }
    if let Some(url) = config.nats_url.clone() {
        workers.push(tokio::spawn(crate::events::bus::publish_events(
            db.worker.clone(),
            url,
            config.worker_interval,
        )));
    }
    workers
}

/// The object store the marts are mirrored to (`--analytics-store`).
fn analytics_mirror(
    config: &Config,
) -> Result<Option<crate::analytics::Mirror>, crate::analytics::mirror::MirrorError> {
    config
        .analytics_store
        .as_deref()
        .map(crate::analytics::Mirror::open)
        .transpose()
}

/// Moves the shadow-read tally into pgshift's table every tick.
async fn flush_shadow_counts(switch: Arc<ReadSwitch>, every: std::time::Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        if let Err(err) = switch.flush().await {
            tracing::debug!(error = %err, "flushing shadow-read counts failed; kept for the next tick");
        }
    }
}

fn generate_admin_token() -> String {
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    format!("adm_{}", hex::encode(bytes))
}
