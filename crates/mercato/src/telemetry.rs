//! Tracing set-up, done once by the binary, and what a log may show.

use tracing_subscriber::EnvFilter;

/// Logs to stderr; `RUST_LOG` overrides the default filter.
pub fn init() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    // Colours only on a terminal, never into log files.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .try_init();
}

/// A URL as a log or an error may show it: without user and password (a
/// NATS token, SMTP credentials).
pub fn without_credentials(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) => {
            let _ = parsed.set_password(None);
            let _ = parsed.set_username("");
            parsed.to_string()
        }
        Err(_) => "(not a URL)".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::without_credentials;

    #[test]
    fn a_logged_url_carries_no_credentials() {
        let shown = without_credentials("nats://ops:s3cret@nats.internal:4222");
        assert_eq!(shown, "nats://nats.internal:4222");
        assert!(!without_credentials("nats://tok3n@127.0.0.1:4222").contains("tok3n"));
        assert!(!without_credentials("smtps://u:hunter2@mail.example.com").contains("hunter2"));
        assert_eq!(without_credentials("not a url"), "(not a URL)");
    }
}
