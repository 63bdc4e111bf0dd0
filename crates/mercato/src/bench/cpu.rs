//! CPU time spent so far by this process (Mercato, with the load generator in
//! it) and by every PostgreSQL process on the machine, from `/proc`: what a
//! benchmark run cost the box, which scheduling noise on 2 cores blurs less
//! than a rate does.

use serde::Serialize;

/// Clock ticks per second of `/proc/*/stat` times (`USER_HZ`, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct CpuSeconds {
    /// This process: the server and the load generator (its HTTP client).
    pub mercato: f64,
    /// Every `postgres` process (backends, WAL writer, checkpointer, …).
    pub postgres: f64,
}

impl CpuSeconds {
    /// Now; zero where `/proc` is not there to read.
    pub fn now() -> Self {
        let mercato = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|stat| parse(&stat).map(|(_, seconds)| seconds))
            .unwrap_or(0.0);
        let mut postgres = 0.0;
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for entry in dir.flatten() {
                let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                    continue;
                };
                if let Some(("postgres", seconds)) = parse(&stat) {
                    postgres += seconds;
                }
            }
        }
        CpuSeconds { mercato, postgres }
    }

    /// Milliseconds per unit of work since `earlier`.
    pub fn ms_per(self, earlier: CpuSeconds, units: usize) -> CpuSeconds {
        let n = units.max(1) as f64;
        CpuSeconds {
            mercato: (self.mercato - earlier.mercato) * 1000.0 / n,
            postgres: (self.postgres - earlier.postgres) * 1000.0 / n,
        }
    }
}

/// (command name, user + system seconds) of a `/proc/<pid>/stat` line. The
/// name is in parentheses and may hold spaces: the fields follow the last `)`.
fn parse(stat: &str) -> Option<(&str, f64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?;
    let mut fields = stat.get(close + 1..)?.split_whitespace();
    // After the name: state is field 3, utime field 14, stime field 15.
    let utime: f64 = fields.nth(11)?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    Some((name, (utime + stime) / TICKS_PER_SECOND))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_user_and_system_time_after_a_name_with_spaces() {
        let stat = "4242 (postgres: x) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0";
        assert_eq!(parse(stat), Some(("postgres: x", 3.0)));
    }

    #[test]
    fn this_process_has_spent_some_time() {
        // Times count in ticks of 10 ms: spin until one has passed.
        let started = std::time::Instant::now();
        let mut spin = 0u64;
        while CpuSeconds::now().mercato == 0.0 && started.elapsed().as_secs() < 5 {
            spin = (0..100_000u64).fold(spin, |a, b| a.wrapping_add(b * b));
        }
        assert!(CpuSeconds::now().mercato > 0.0, "{spin}");
    }
}
