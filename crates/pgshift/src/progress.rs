//! Progress of a backfill or a validation on stderr: a bar on a terminal,
//! otherwise (a log file, CI, a pipe) a plain line every few seconds with
//! the rows done, the rate and the time left.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

pub(crate) enum Progress {
    Hidden,
    Bar(ProgressBar),
    Lines {
        what: String,
        total: u64,
        done: u64,
        started: Instant,
        last: Instant,
        every: Duration,
    },
}

impl Progress {
    /// Nothing when `show` is off (tests, machine-readable runs); a bar when
    /// stderr is a terminal; plain lines every `every` otherwise.
    pub fn new(show: bool, every: Duration, total: u64, what: &str) -> Progress {
        if !show {
            return Progress::Hidden;
        }
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{bar:30}] {pos}/{len} rows {per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_prefix(what.to_owned());
            return Progress::Bar(bar);
        }
        let now = Instant::now();
        Progress::Lines {
            what: what.to_owned(),
            total,
            done: 0,
            started: now,
            last: now,
            every,
        }
    }

    pub fn inc(&mut self, rows: u64) {
        match self {
            Progress::Hidden => {}
            Progress::Bar(bar) => bar.inc(rows),
            Progress::Lines {
                what,
                total,
                done,
                started,
                last,
                every,
            } => {
                *done += rows;
                if last.elapsed() < *every {
                    return;
                }
                *last = Instant::now();
                let line = log_line(what, *done, *total, started.elapsed());
                // A closed stderr is no reason to stop copying.
                let _ = writeln!(std::io::stderr(), "{line}");
            }
        }
    }

    pub fn finish(self) {
        if let Progress::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

/// `backfill: 12000 of 50000 rows (24%), 3000 rows/s, eta 13 s`.
fn log_line(what: &str, done: u64, total: u64, elapsed: Duration) -> String {
    let rate = done as f64 / elapsed.as_secs_f64().max(1e-3);
    let percent = if total == 0 {
        100.0
    } else {
        done as f64 * 100.0 / total as f64
    };
    let eta = if rate > 0.0 && total > done {
        format!("{:.0} s", (total - done) as f64 / rate)
    } else {
        "-".into()
    };
    format!("{what}: {done} of {total} rows ({percent:.0}%), {rate:.0} rows/s, eta {eta}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_line_has_rows_rate_and_eta() {
        assert_eq!(
            log_line("backfill", 12_000, 50_000, Duration::from_secs(4)),
            "backfill: 12000 of 50000 rows (24%), 3000 rows/s, eta 13 s"
        );
        assert_eq!(
            log_line("validate", 10, 10, Duration::from_secs(1)),
            "validate: 10 of 10 rows (100%), 10 rows/s, eta -"
        );
    }
}
