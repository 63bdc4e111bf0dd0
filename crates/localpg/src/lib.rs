//! Starts a private PostgreSQL cluster from the system's binaries.
//!
//! `LocalPg::start(dir)` runs `initdb` the first time (data survives restarts),
//! starts the server on a free loopback port, and stops it with
//! `pg_ctl stop -m fast` when the handle is dropped.
//!
//! Every connection authenticates with a password (SCRAM-SHA-256): loopback is
//! shared by every local user, so trust would make each of them superuser. The
//! superuser's password is generated at `initdb` and kept in
//! `dir/superuser.password` (mode 0600); `url()` carries it.
//!
//! PostgreSQL refuses to run as root; when we are root the binaries run as the
//! `postgres` system user (via `runuser`) and the data directory is handed to it.
//! That user must also reach the directory: one below a directory only root may
//! enter (`mktemp -d` makes them, and so does any `mkdir` under umask 077) is
//! refused with the directory in the way, which the caller hands over too
//! ([`hand_over`]) when it is its own.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "PostgreSQL server binaries not found (looked for {0} via pg_config and /usr/lib/postgresql/*/bin); install them, e.g. `apt-get install postgresql`"
    )]
    MissingBinaries(&'static str),
    #[error("data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{step} failed: {detail}")]
    Command { step: &'static str, detail: String },
    #[error("data directory {path} is in use by process {pid}; stop it first (or delete {path}/localpg.pid if that process is not ours)")]
    InUse { path: PathBuf, pid: u32 },
    #[error("PostgreSQL runs as user postgres (we are root), which cannot reach {path}: {blocked_at} does not let it in; use a directory it can reach, or let it search {blocked_at} (`chmod o+x`)")]
    Unreachable { path: PathBuf, blocked_at: PathBuf },
}

/// A running private cluster. Dropping it stops the server.
#[derive(Debug)]
pub struct LocalPg {
    bindir: PathBuf,
    dir: PathBuf,
    data_dir: PathBuf,
    port: u16,
    password: String,
    run_as_postgres: bool,
    stopped: bool,
}

const SUPERUSER: &str = "postgres";
const PASSWORD_FILE: &str = "superuser.password";

impl LocalPg {
    /// Starts (creating if needed) a durable cluster whose files live in `dir/pgdata`.
    pub fn start(dir: &Path) -> Result<Self, Error> {
        Self::start_with(dir, true)
    }

    /// A cluster for throw-away data (tests): no fsync, so much faster.
    pub fn start_ephemeral(dir: &Path) -> Result<Self, Error> {
        Self::start_with(dir, false)
    }

    fn start_with(dir: &Path, durable: bool) -> Result<Self, Error> {
        let bindir = find_bindir()?;
        let run_as_postgres = is_root();
        std::fs::create_dir_all(dir).map_err(|source| Error::DataDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let dir = dir.canonicalize().map_err(|source| Error::DataDir {
            path: dir.to_path_buf(),
            source,
        })?;
        claim(&dir)?;
        let data_dir = dir.join("pgdata");
        let mut pg = LocalPg {
            bindir,
            dir: dir.clone(),
            data_dir,
            port: 0,
            password: String::new(),
            run_as_postgres,
            stopped: true,
        };
        if run_as_postgres {
            hand_over(&dir)?;
            reachable_by_postgres(&dir)?;
        }
        let fresh = !pg.data_dir.join("PG_VERSION").exists();
        // A cluster made before passwords were used has none on file: it gets one below.
        let legacy_trust = !fresh && !dir.join(PASSWORD_FILE).exists();
        pg.password = read_or_create_password(&dir.join(PASSWORD_FILE))?;
        if fresh {
            pg.initdb()?;
        }
        // A previous owner killed with SIGKILL leaves its server running: stop it first.
        if pg.data_dir.join("postmaster.pid").exists()
            && pg
                .pg_ctl(&["stop", "-m", "fast", "-w", "-t", "30"])
                .is_err()
        {
            let _ = pg.pg_ctl(&["stop", "-m", "immediate", "-w"]);
        }
        pg.port = free_port().map_err(|source| Error::DataDir {
            path: dir.clone(),
            source,
        })?;
        let fsync = if durable { "on" } else { "off" };
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c fsync={fsync} -c max_connections=300",
            pg.port
        );
        let log = dir.join("postgres.log");
        let log = log.to_string_lossy().into_owned();
        pg.pg_ctl(&["start", "-w", "-t", "60", "-l", &log, "-o", &options])?;
        pg.stopped = false;
        if legacy_trust {
            pg.require_passwords()?;
        }
        Ok(pg)
    }

    /// Moves a cluster made with trust auth to passwords: sets the superuser's
    /// (over the still-trusted connection), then makes every line of
    /// `pg_hba.conf` ask for SCRAM and reloads.
    fn require_passwords(&self) -> Result<(), Error> {
        let escaped = self.password.replace('\'', "''");
        let trusted_url = format!("postgres://{SUPERUSER}@127.0.0.1:{}/postgres", self.port);
        let mut psql = Command::new(self.bindir.join("psql"));
        psql.args([
            &trusted_url,
            "-XAtqc",
            &format!("set password_encryption = 'scram-sha-256'; alter role {SUPERUSER} password '{escaped}'"),
        ]);
        self.run("set the superuser's password", &mut psql)?;
        let hba = self.data_dir.join("pg_hba.conf");
        let text = std::fs::read_to_string(&hba).map_err(|source| Error::DataDir {
            path: hba.clone(),
            source,
        })?;
        let scram: String = text
            .lines()
            .map(|l| {
                if l.trim_start().starts_with('#') {
                    l.to_owned()
                } else {
                    l.replace("trust", "scram-sha-256")
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(&hba, scram + "\n").map_err(|source| Error::DataDir {
            path: hba.clone(),
            source,
        })?;
        self.pg_ctl(&["reload"]).map(|_| ())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// URL of the superuser connection to database `db`, password included.
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://{SUPERUSER}:{}@127.0.0.1:{}/{db}",
            self.password, self.port
        )
    }

    pub fn stop(&mut self) -> Result<(), Error> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        self.pg_ctl(&["stop", "-m", "fast", "-w"]).map(|_| ())
    }

    fn initdb(&self) -> Result<(), Error> {
        // initdb reads the password from a file; it runs as `postgres` when we are root.
        let pwfile = self.dir.join("initdb.pwfile");
        write_secret(&pwfile, &self.password)?;
        if self.run_as_postgres {
            self.run("chown", Command::new("chown").arg("postgres").arg(&pwfile))?;
        }
        let mut cmd = self.command("initdb");
        cmd.arg("-D")
            .arg(&self.data_dir)
            .arg("--pwfile")
            .arg(&pwfile)
            .args([
                "-A",
                "scram-sha-256",
                "-U",
                SUPERUSER,
                "-E",
                "UTF8",
                "--no-instructions",
                "-N",
            ]);
        let result = self.run("initdb", &mut cmd).map(|_| ());
        let _ = std::fs::remove_file(&pwfile);
        result
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<Output, Error> {
        let mut cmd = self.command("pg_ctl");
        cmd.arg("-D").arg(&self.data_dir).args(args);
        self.run("pg_ctl", &mut cmd)
    }

    fn command(&self, binary: &str) -> Command {
        let path = self.bindir.join(binary);
        if self.run_as_postgres {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(path);
            cmd
        } else {
            Command::new(path)
        }
    }

    fn run(&self, step: &'static str, cmd: &mut Command) -> Result<Output, Error> {
        let out = cmd.output().map_err(|e| Error::Command {
            step,
            detail: e.to_string(),
        })?;
        if out.status.success() {
            Ok(out)
        } else {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let detail = stderr.lines().last().unwrap_or("no output").to_string();
            Err(Error::Command { step, detail })
        }
    }
}

impl Drop for LocalPg {
    fn drop(&mut self) {
        if self.stop().is_ok() {
            let _ = std::fs::remove_file(self.dir.join(LOCK_FILE));
        }
    }
}

const LOCK_FILE: &str = "localpg.pid";

/// The superuser URL of database `db` on the cluster another live process
/// (a running `mercato serve`) keeps in `dir`, or `None` when no live process
/// holds it (then `start` it). Commands use this to work beside a server.
pub fn attach(dir: &Path, db: &str) -> Result<Option<String>, Error> {
    let holder = std::fs::read_to_string(dir.join(LOCK_FILE))
        .ok()
        .and_then(|t| t.trim().parse::<u32>().ok())
        .filter(|pid| *pid != std::process::id() && Path::new(&format!("/proc/{pid}")).exists());
    if holder.is_none() {
        return Ok(None);
    }
    // postmaster.pid: pid, data directory, start time, port, ...
    let pidfile = dir.join("pgdata").join("postmaster.pid");
    let text = std::fs::read_to_string(&pidfile).map_err(|source| Error::DataDir {
        path: pidfile.clone(),
        source,
    })?;
    let port: u16 = text
        .lines()
        .nth(3)
        .and_then(|l| l.trim().parse().ok())
        .ok_or_else(|| Error::Command {
            step: "attach",
            detail: format!("{} names no port", pidfile.display()),
        })?;
    let password =
        std::fs::read_to_string(dir.join(PASSWORD_FILE)).map_err(|source| Error::DataDir {
            path: dir.join(PASSWORD_FILE),
            source,
        })?;
    Ok(Some(format!(
        "postgres://{SUPERUSER}:{}@127.0.0.1:{port}/{db}",
        password.trim()
    )))
}

/// Takes `dir` for this process, unless another live process holds it.
/// The password kept in `path`, or a new random one written there (mode 0600).
fn read_or_create_password(path: &Path) -> Result<String, Error> {
    if let Ok(kept) = std::fs::read_to_string(path) {
        let kept = kept.trim().to_owned();
        if !kept.is_empty() {
            return Ok(kept);
        }
    }
    let mut bytes = [0u8; 24];
    let random = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes));
    random.map_err(|source| Error::DataDir {
        path: path.to_path_buf(),
        source,
    })?;
    let password: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    write_secret(path, &password)?;
    Ok(password)
}

/// Writes a secret to a file only its owner can read (0600); a file that
/// existed with wider permissions is narrowed too.
pub fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options.open(path)?;
    #[cfg(unix)]
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(contents.as_bytes())
}

fn write_secret(path: &Path, contents: &str) -> Result<(), Error> {
    write_private(path, contents).map_err(|source| Error::DataDir {
        path: path.to_path_buf(),
        source,
    })
}

fn claim(dir: &Path) -> Result<(), Error> {
    let lock = dir.join(LOCK_FILE);
    let me = std::process::id();
    if let Ok(text) = std::fs::read_to_string(&lock) {
        if let Ok(pid) = text.trim().parse::<u32>() {
            if pid != me && Path::new(&format!("/proc/{pid}")).exists() {
                return Err(Error::InUse {
                    path: dir.to_path_buf(),
                    pid,
                });
            }
        }
    }
    std::fs::write(&lock, me.to_string()).map_err(|source| Error::DataDir {
        path: lock.clone(),
        source,
    })
}

/// Hands `dir` to the user PostgreSQL runs as when we are root (`postgres`),
/// as the data directory is; does nothing otherwise. For a directory of the
/// caller's on the way to a cluster's, which that user must pass through.
pub fn hand_over(dir: &Path) -> Result<(), Error> {
    if !is_root() {
        return Ok(());
    }
    let out = Command::new("chown")
        .arg("postgres")
        .arg(dir)
        .output()
        .map_err(|source| Error::DataDir {
            path: dir.to_path_buf(),
            source,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Command {
            step: "chown",
            detail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// Whether user `postgres` may search `dir` (every directory above it included).
fn postgres_can_enter(dir: &Path) -> bool {
    Command::new("runuser")
        .args(["-u", "postgres", "--", "test", "-x"])
        .arg(dir)
        .status()
        .is_ok_and(|status| status.success())
}

/// `Unreachable`, naming the first directory on the way that user `postgres`
/// cannot enter, unless it can reach `dir`.
fn reachable_by_postgres(dir: &Path) -> Result<(), Error> {
    if postgres_can_enter(dir) {
        return Ok(());
    }
    let mut ancestors: Vec<&Path> = dir.ancestors().collect();
    ancestors.reverse();
    let blocked_at = ancestors
        .into_iter()
        .find(|a| !postgres_can_enter(a))
        .unwrap_or(dir);
    Err(Error::Unreachable {
        path: dir.to_path_buf(),
        blocked_at: blocked_at.to_path_buf(),
    })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `pg_config --bindir` first, else the newest `/usr/lib/postgresql/*/bin`.
fn find_bindir() -> Result<PathBuf, Error> {
    let has_server = |dir: &Path| dir.join("initdb").exists() && dir.join("pg_ctl").exists();
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_server(&dir) {
            return Ok(dir);
        }
    }
    let mut candidates: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            Some((version, e.path().join("bin")))
        })
        .filter(|(_, dir)| has_server(dir))
        .collect();
    candidates.sort();
    candidates
        .pop()
        .map(|(_, dir)| dir)
        .ok_or(Error::MissingBinaries("initdb and pg_ctl"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn psql(pg: &LocalPg, sql: &str) -> String {
        let out = Command::new(pg.bindir.join("psql"))
            .args([&pg.url("postgres"), "-XAtc", sql])
            .output()
            .expect("psql runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("localpg-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn data_survives_a_restart() {
        let dir = temp_dir("restart");
        {
            let pg = LocalPg::start(&dir).expect("first start");
            psql(
                &pg,
                "create table kept (v int); insert into kept values (42)",
            );
        }
        let pg = LocalPg::start(&dir).expect("second start");
        assert_eq!(psql(&pg, "select v from kept"), "42");
        drop(pg);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn connections_need_the_password_kept_in_a_private_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp_dir("password");
        let pg = LocalPg::start_ephemeral(&dir).expect("start");
        assert_eq!(psql(&pg, "select 1"), "1");
        let mode = std::fs::metadata(dir.join(PASSWORD_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "password file mode {mode:o}");
        let without = format!("postgres://postgres@127.0.0.1:{}/postgres", pg.port());
        let out = Command::new(pg.bindir.join("psql"))
            .args([&without, "-XAtc", "select 1"])
            .env_remove("PGPASSWORD")
            .env("PGPASSFILE", "/nonexistent")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("psql runs");
        assert!(
            !out.status.success(),
            "a connection without the password is refused"
        );
        let wrong = format!("postgres://postgres:wrong@127.0.0.1:{}/postgres", pg.port());
        let out = Command::new(pg.bindir.join("psql"))
            .args([&wrong, "-XAtc", "select 1"])
            .output()
            .expect("psql runs");
        assert!(!out.status.success(), "a wrong password is refused");
        drop(pg);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_cluster_made_with_trust_auth_moves_to_passwords_and_keeps_its_data() {
        let dir = temp_dir("legacy");
        {
            let pg = LocalPg::start_ephemeral(&dir).expect("start");
            psql(
                &pg,
                "create table kept (v int); insert into kept values (7)",
            );
        }
        // Make it look like a cluster of the trust era: trust in pg_hba, no password file.
        let hba = dir.join("pgdata").join("pg_hba.conf");
        let text = std::fs::read_to_string(&hba).unwrap();
        std::fs::write(&hba, text.replace("scram-sha-256", "trust")).unwrap();
        std::fs::remove_file(dir.join(PASSWORD_FILE)).unwrap();
        let pg = LocalPg::start_ephemeral(&dir).expect("restart moves to passwords");
        assert_eq!(psql(&pg, "select v from kept"), "7");
        let hba = std::fs::read_to_string(&hba).unwrap();
        assert!(!hba
            .lines()
            .any(|l| !l.starts_with('#') && l.contains("trust")));
        drop(pg);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_cluster_below_a_directory_only_we_may_enter_starts_once_it_is_handed_over() {
        use std::os::unix::fs::DirBuilderExt;
        let outer = temp_dir("private");
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&outer)
            .unwrap();
        let dir = outer.join("cells").join("big");
        if is_root() {
            // The server runs as `postgres`, which cannot pass `outer`.
            let err = LocalPg::start_ephemeral(&dir).unwrap_err();
            assert!(
                matches!(&err, Error::Unreachable { blocked_at, .. } if *blocked_at == outer),
                "{err}"
            );
            hand_over(&outer).unwrap();
        }
        // Not root, the server runs as us: our own directories are no obstacle.
        let pg = LocalPg::start_ephemeral(&dir).expect("start below a private directory");
        assert_eq!(psql(&pg, "select 1"), "1");
        drop(pg);
        let _ = std::fs::remove_dir_all(&outer);
    }

    #[test]
    fn a_directory_held_by_another_live_process_is_refused() {
        let dir = temp_dir("held");
        std::fs::create_dir_all(&dir).unwrap();
        // PID 1 is always alive and never us.
        std::fs::write(dir.join(LOCK_FILE), "1").unwrap();
        let err = LocalPg::start_ephemeral(&dir).unwrap_err();
        assert!(matches!(err, Error::InUse { pid: 1, .. }), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_server_left_running_by_a_killed_owner_is_replaced() {
        let dir = temp_dir("orphan");
        let pg = LocalPg::start(&dir).expect("first start");
        std::mem::forget(pg); // as if the owner was SIGKILLed
        let pg = LocalPg::start(&dir).expect("restart over an orphan");
        assert_eq!(psql(&pg, "select 1"), "1");
        drop(pg);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
