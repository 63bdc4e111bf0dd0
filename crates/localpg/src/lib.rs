//! Starts a private PostgreSQL cluster from the system's binaries.
//!
//! `LocalPg::start(dir)` runs `initdb` the first time (data survives restarts),
//! starts the server on a free loopback port with trust auth, and stops it with
//! `pg_ctl stop -m fast` when the handle is dropped.
//!
//! PostgreSQL refuses to run as root; when we are root the binaries run as the
//! `postgres` system user (via `runuser`) and the data directory is handed to it.

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
}

/// A running private cluster. Dropping it stops the server.
#[derive(Debug)]
pub struct LocalPg {
    bindir: PathBuf,
    dir: PathBuf,
    data_dir: PathBuf,
    port: u16,
    run_as_postgres: bool,
    stopped: bool,
}

const SUPERUSER: &str = "postgres";

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
            run_as_postgres,
            stopped: true,
        };
        if run_as_postgres {
            pg.run("chown", Command::new("chown").arg("postgres").arg(&dir))?;
        }
        if !pg.data_dir.join("PG_VERSION").exists() {
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
        Ok(pg)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// URL of the superuser connection to database `db`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{db}", self.port)
    }

    pub fn stop(&mut self) -> Result<(), Error> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        self.pg_ctl(&["stop", "-m", "fast", "-w"]).map(|_| ())
    }

    fn initdb(&self) -> Result<(), Error> {
        let mut cmd = self.command("initdb");
        cmd.arg("-D").arg(&self.data_dir).args([
            "-A",
            "trust",
            "-U",
            SUPERUSER,
            "-E",
            "UTF8",
            "--no-instructions",
            "-N",
        ]);
        self.run("initdb", &mut cmd).map(|_| ())
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

/// Takes `dir` for this process, unless another live process holds it.
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
