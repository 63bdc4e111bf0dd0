//! Hostile cases: roles (see `hostile/mod.rs`). What whoever runs SQL as a
//! service role (a stolen pool, an injected query) or reads the logs gets.

use std::sync::{Arc, Mutex};

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};
use uuid::Uuid;

use mercato::db::{APP_ROLE, WORKER_ROLE};

/// Everything a tracing subscriber writes, kept for the test to read.
#[derive(Clone, Default)]
struct CapturedLogs(Arc<Mutex<Vec<u8>>>);

impl CapturedLogs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for CapturedLogs {
    type Writer = CapturedLogs;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// A private cluster that asks every connection for its password (SCRAM).
struct PasswordCluster {
    pg: localpg::LocalPg,
    dir: std::path::PathBuf,
}

impl PasswordCluster {
    fn start() -> PasswordCluster {
        let dir = std::env::temp_dir().join(format!("mercato-roles-{}", Uuid::now_v7().simple()));
        let pg = localpg::LocalPg::start_ephemeral(&dir).expect("a private cluster starts");
        PasswordCluster { pg, dir }
    }
}

impl Drop for PasswordCluster {
    fn drop(&mut self) {
        let _ = self.pg.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Issue 35 item 6: the service roles carried the owner's password (on the
/// embedded default, the superuser's), set by a statement the owner's pool
/// wrote to the log in clear on every start.
#[tokio::test]
async fn service_roles_have_their_own_secret_and_the_owners_password_never_reaches_the_log() {
    let logs = CapturedLogs::default();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("sqlx=debug"))
        .with_writer(logs.clone())
        .with_ansi(false)
        .finish();
    let _logging = tracing::subscriber::set_default(subscriber);

    let cluster = PasswordCluster::start();
    let owner_url = cluster.pg.url("postgres");
    let owner_opts: PgConnectOptions = owner_url.parse().expect("owner URL");
    let owner_password = url_password(&owner_url);

    let db = mercato::db::prepare(&owner_url, 2).await.expect("prepare");
    // The cluster asks for passwords: the pools logged in with the roles' own.
    for (pool, role) in [(&db.app, APP_ROLE), (&db.worker, WORKER_ROLE)] {
        let user: String = sqlx::query_scalar("select current_user::text")
            .fetch_one(pool)
            .await
            .expect("the role logs in with its own secret");
        assert_eq!(user, role);
    }

    let owner = PgPool::connect(&owner_url).await.expect("owner connects");
    let stored: Vec<(String, Option<String>)> = sqlx::query_as(
        "select rolname::text, rolpassword from pg_authid where rolname = any ($1) order by 1",
    )
    .bind(vec![APP_ROLE, WORKER_ROLE])
    .fetch_all(&owner)
    .await
    .expect("pg_authid");
    assert_eq!(stored.len(), 2);
    for (role, verifier) in &stored {
        let verifier = verifier.as_deref().unwrap_or_default();
        assert!(
            verifier.starts_with("SCRAM-SHA-256$4096:"),
            "{role} keeps a SCRAM verifier, not {verifier:?}"
        );
        assert!(!verifier.contains(&owner_password), "{role}");
    }
    assert_ne!(stored[0].1, stored[1].1, "each role has its own secret");
    for role in [APP_ROLE, WORKER_ROLE] {
        let with_owners = PgConnection::connect_with(&owner_opts.clone().username(role)).await;
        assert!(
            with_owners.is_err(),
            "{role} must not log in with the owner's password"
        );
    }

    let text = logs.text();
    assert!(
        text.contains("sqlx::query") && text.contains("create role"),
        "the capture sees the owner pool's statements:\n{text}"
    );
    assert!(
        !text.contains(&owner_password),
        "the owner's password is in the log:\n{text}"
    );
    db.app.close().await;
    db.worker.close().await;
    owner.close().await;
}

fn url_password(url: &str) -> String {
    let opts: PgConnectOptions = url.parse().expect("URL");
    let url = opts.to_url_lossy();
    let password = url
        .password()
        .expect("the private cluster's URL has a password");
    assert!(password.len() >= 16, "a password worth looking for");
    password.to_owned()
}
