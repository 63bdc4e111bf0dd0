//! E-mail to customers: an outbox written in the transaction of the change a
//! message tells of, and a sender that delivers each message **at most once**
//! per idempotency key, by SMTP or, with no SMTP server configured, as `.eml`
//! files in a directory (the embedded database's development mode).
//!
//! Owns tables `mail_outbox` and `mail_settings` (who a shop's mail is from).
//! Other contexts call `enqueue` in their transaction.

pub mod compose;
pub mod http;
mod store;

use std::path::PathBuf;

use lettre::message::{header::ContentType, Mailbox, MultiPart, SinglePart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use sqlx::PgPool;
use uuid::Uuid;

use crate::cells::{Cells, MerchantDb};
use crate::db::{MerchantId, TenantTx};

pub use store::{erase_recipient, messages_to, MailRecord, MailStatus};

/// A message to queue. `key` names it for good: queueing the same key twice
/// queues it once.
#[derive(Clone, Debug)]
pub struct OutgoingMail {
    pub key: String,
    /// `None`: the transport's sender; else a mailbox (`Shop <a@b.c>`).
    pub from: Option<String>,
    pub to: String,
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// Queues `mail` in the caller's transaction; `false` when its key was queued before.
pub async fn enqueue(tx: &mut TenantTx, mail: &OutgoingMail) -> Result<bool, sqlx::Error> {
    store::insert(tx, mail).await
}

/// Who a merchant's mail to its shoppers is from: the name it set (else
/// `shop_name`), at the address it set (else the transport's).
pub async fn shop_sender(
    tx: &mut TenantTx,
    shop_name: &str,
) -> Result<Option<String>, sqlx::Error> {
    let (name, address) = store::settings(tx).await?;
    let name = name.unwrap_or_else(|| shop_name.to_owned());
    // A display name with quotes or angle brackets would break the header: quoted.
    let name = name.replace(['"', '\\', '<', '>'], "");
    // Without an address of its own, the name alone: the sender pairs it with
    // the transport's address (`sender`).
    Ok(Some(match address {
        Some(a) => format!("\"{name}\" <{a}>"),
        None => name,
    }))
}

/// The merchant's sender settings: (from_name, from_address).
pub async fn settings(tx: &mut TenantTx) -> Result<(Option<String>, Option<String>), sqlx::Error> {
    store::settings(tx).await
}

/// Sets who the merchant's mail is from (`None`: the defaults).
pub async fn put_settings(
    tx: &mut TenantTx,
    from_name: Option<&str>,
    from_address: Option<&str>,
) -> Result<(), sqlx::Error> {
    store::put_settings(tx, from_name, from_address).await
}

/// Attempts of a message the transport refused before it is left `failed`.
const MAX_ATTEMPTS: i32 = 5;

/// Where messages go.
#[derive(Clone, Debug)]
pub enum Transport {
    /// An SMTP server: `smtp://host:port` (plain, as a local relay or a test
    /// sink speaks it), `smtp+starttls://…` (STARTTLS required) or
    /// `smtps://…` (TLS from the first byte); `user:password@` for AUTH.
    Smtp {
        host: String,
        port: u16,
        from: String,
        security: SmtpSecurity,
        credentials: Option<SmtpCredentials>,
    },
    /// One `<id>.eml` file per message in `dir`.
    Files { dir: PathBuf, from: String },
}

/// How the connection to the SMTP server is protected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmtpSecurity {
    Plain,
    /// STARTTLS, required: a server that does not offer it gets no message.
    StartTls,
    /// Implicit TLS (`smtps`, usually port 465).
    Tls,
}

/// A user and password for SMTP AUTH; the password never shows in `Debug`.
#[derive(Clone)]
pub struct SmtpCredentials {
    pub user: String,
    password: String,
}

impl std::fmt::Debug for SmtpCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SmtpCredentials({}, ***)", self.user)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error(
        "SMTP URL {0:?} is not smtp://, smtp+starttls:// or smtps://[user:password@]host:port"
    )]
    BadUrl(String),
    #[error("mail address {0:?}: {1}")]
    Address(String, String),
    #[error("building the message: {0}")]
    Build(String),
    #[error("sending: {0}")]
    Send(String),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

impl Transport {
    /// The SMTP server of `smtp_url` when given, else files in `dir`.
    pub fn from_config(
        smtp_url: Option<&str>,
        dir: PathBuf,
        from: &str,
    ) -> Result<Transport, MailError> {
        let from = from.to_owned();
        let Some(raw) = smtp_url else {
            return Ok(Transport::Files { dir, from });
        };
        // The URL is not echoed back: it may hold a password.
        let bad = || MailError::BadUrl(crate::telemetry::without_credentials(raw));
        let url = reqwest::Url::parse(raw).map_err(|_| bad())?;
        let (security, default_port) = match url.scheme() {
            "smtp" => (SmtpSecurity::Plain, 25),
            "smtp+starttls" => (SmtpSecurity::StartTls, 587),
            "smtps" => (SmtpSecurity::Tls, 465),
            _ => return Err(bad()),
        };
        let host = url.host_str().filter(|h| !h.is_empty()).ok_or_else(bad)?;
        let decode = |s: &str| percent_decode(s).ok_or_else(bad);
        let credentials = match (url.username(), url.password()) {
            ("", None) => None,
            (user, password) => Some(SmtpCredentials {
                user: decode(user)?,
                password: decode(password.unwrap_or(""))?,
            }),
        };
        Ok(Transport::Smtp {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port: url.port().unwrap_or(default_port),
            from,
            security,
            credentials,
        })
    }

    fn from(&self) -> &str {
        match self {
            Transport::Smtp { from, .. } | Transport::Files { from, .. } => from,
        }
    }
}

/// `%XX` escapes of a URL's user or password, decoded.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The sender of one transport: one SMTP connection pool, reused.
pub struct Sender {
    transport: Transport,
    smtp: Option<AsyncSmtpTransport<Tokio1Executor>>,
}

impl Sender {
    pub fn new(transport: Transport) -> Sender {
        let smtp = match &transport {
            Transport::Smtp {
                host,
                port,
                security,
                credentials,
                ..
            } => {
                let builder = match security {
                    SmtpSecurity::Plain => Ok(
                        AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host.as_str()),
                    ),
                    SmtpSecurity::StartTls => {
                        AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host)
                    }
                    SmtpSecurity::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(host),
                };
                match builder {
                    Ok(builder) => {
                        let mut builder = builder
                            .port(*port)
                            .timeout(Some(std::time::Duration::from_secs(10)));
                        if let Some(c) = credentials {
                            builder = builder.credentials(
                                lettre::transport::smtp::authentication::Credentials::new(
                                    c.user.clone(),
                                    c.password.clone(),
                                ),
                            );
                        }
                        Some(builder.build())
                    }
                    Err(err) => {
                        // Sending then fails, message by message, and says why.
                        tracing::error!(error = %err, %host, "cannot set up TLS to the SMTP server");
                        None
                    }
                }
            }
            Transport::Files { .. } => None,
        };
        Sender { transport, smtp }
    }

    /// Sends `merchant`'s queued messages (up to `limit`); returns how many were sent.
    /// Each is claimed (`sending`, committed) on its own just before it leaves,
    /// so a crash during an exchange leaves that one message `unknown` rather
    /// than sending it again, and no other. One transaction per message
    /// records how the last one went and claims the next.
    pub async fn send_queued(&self, db: &MerchantDb, limit: i64) -> Result<usize, MailError> {
        let mut sent = 0;
        let mut claimed_so_far = 0;
        let mut last: Option<(Uuid, Result<(), MailError>)> = None;
        loop {
            // After a refusal the transport is likely down: the rest wait for the next pass.
            let claim_more =
                claimed_so_far < limit && last.as_ref().is_none_or(|(_, outcome)| outcome.is_ok());
            if last.is_none() && !claim_more {
                break;
            }
            let mut tx = db.begin().await?;
            if let Some((id, outcome)) = last.take() {
                match &outcome {
                    Ok(()) => {
                        store::mark_sent(&mut tx, id).await?;
                        sent += 1;
                    }
                    // Refused before it left (no server, a bad address): tried
                    // again on a later pass, up to MAX_ATTEMPTS.
                    Err(err) => {
                        store::retry_or_fail(&mut tx, id, &err.to_string(), MAX_ATTEMPTS).await?
                    }
                }
                let label = if outcome.is_ok() { "sent" } else { "failed" };
                metrics::counter!("mail_sent_total", "outcome" => label).increment(1);
            }
            let claimed = if claim_more {
                store::claim(&mut tx, 1).await?
            } else {
                Vec::new()
            };
            tx.commit().await?;
            let Some(mail) = claimed.into_iter().next() else {
                break;
            };
            claimed_so_far += 1;
            let outcome = self.deliver(&mail).await;
            if let Err(err) = &outcome {
                tracing::warn!(error = %err, to = %mail.to, "mail not sent");
            }
            last = Some((mail.id, outcome));
        }
        Ok(sent)
    }

    async fn deliver(&self, mail: &store::Claimed) -> Result<(), MailError> {
        let message = build(&sender(mail.from.as_deref(), self.transport.from())?, mail)?;
        match (&self.transport, &self.smtp) {
            (_, Some(smtp)) => smtp
                .send(message)
                .await
                .map(|_| ())
                .map_err(|e| MailError::Send(e.to_string())),
            (Transport::Files { dir, .. }, None) => {
                std::fs::create_dir_all(dir).map_err(|e| MailError::Send(e.to_string()))?;
                let path = dir.join(format!("{}.eml", mail.id));
                std::fs::write(&path, message.formatted())
                    .map_err(|e| MailError::Send(format!("{}: {e}", path.display())))
            }
            (Transport::Smtp { .. }, None) => Err(MailError::Send("no SMTP client".into())),
        }
    }
}

/// The sender of `serve`: every merchant's queued messages (those queued by
/// the customers' links; `remediate settle` sends its own), each tick.
pub async fn send_every_merchants_mail(
    cells: Cells,
    cell: String,
    worker: PgPool,
    transport: Transport,
    every: std::time::Duration,
    suspended: crate::tenancy::Suspended,
) {
    // Merchants take turns of this many messages, so one merchant's
    // thousands of apologies do not hold back another's single receipt.
    const TURN: i64 = 20;
    let sender = Sender::new(transport);
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let mut more = true;
        while more {
            more = false;
            let merchants = match store::merchants_with_queued_mail(&worker).await {
                Ok(m) => m,
                Err(err) => {
                    tracing::warn!(error = %err, "listing queued mail failed");
                    break;
                }
            };
            // A suspended merchant's mail waits, queued, until it is active again.
            for merchant in merchants.into_iter().filter(|m| !suspended.contains(*m)) {
                let db = match cells.merchant_db_for_job(MerchantId(merchant)).await {
                    // Served by another cell now: that cell's sender sends it.
                    Ok(db) if db.cell_name() != cell => continue,
                    Ok(db) => db,
                    Err(err) => {
                        tracing::warn!(error = %err, %merchant, "cannot route queued mail");
                        continue;
                    }
                };
                match sender.send_queued(&db, TURN).await {
                    // A full turn: more may be waiting; another round after the others'.
                    Ok(sent) => more |= sent as i64 == TURN,
                    Err(err) => tracing::warn!(error = %err, %merchant, "sending mail failed"),
                }
            }
        }
    }
}

/// Messages left `sending` for over a minute by a process that died
/// mid-exchange: marked `unknown` (perhaps sent), never sent again. Returns how many.
pub async fn give_up_interrupted(tx: &mut TenantTx) -> Result<u64, sqlx::Error> {
    store::mark_interrupted(tx).await
}

/// Counts of `merchant`'s messages whose key starts with `prefix`, by status.
pub async fn counts(
    tx: &mut TenantTx,
    prefix: &str,
) -> Result<Vec<(MailStatus, i64)>, sqlx::Error> {
    store::counts(tx, prefix).await
}

fn mailbox(address: &str) -> Result<Mailbox, MailError> {
    address.parse().map_err(|e: lettre::address::AddressError| {
        MailError::Address(address.to_owned(), e.to_string())
    })
}

/// The From of a message: the transport's, the message's own mailbox, or the
/// message's display name at the transport's address.
fn sender(own: Option<&str>, transport: &str) -> Result<Mailbox, MailError> {
    match own {
        None => mailbox(transport),
        Some(own) if own.contains('<') => mailbox(own),
        Some(name) => Ok(Mailbox::new(
            Some(name.to_owned()),
            mailbox(transport)?.email,
        )),
    }
}

/// The message: plain text and HTML alternatives, its Message-ID derived from
/// the outbox row so that a receiver can tell repeats apart.
fn build(from: &Mailbox, mail: &store::Claimed) -> Result<Message, MailError> {
    Message::builder()
        .from(from.clone())
        .to(mailbox(&mail.to)?)
        .subject(&mail.subject)
        .message_id(Some(format!("<{}@mercato.local>", mail.id)))
        .multipart(
            MultiPart::alternative()
                .singlepart(
                    SinglePart::builder()
                        .header(ContentType::TEXT_PLAIN)
                        .body(mail.text.clone()),
                )
                .singlepart(
                    SinglePart::builder()
                        .header(ContentType::TEXT_HTML)
                        .body(mail.html.clone()),
                ),
        )
        .map_err(|e| MailError::Build(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::{SmtpSecurity, Transport};
    use std::path::PathBuf;

    fn smtp(url: &str) -> Transport {
        Transport::from_config(Some(url), PathBuf::new(), "shop@example.com").expect(url)
    }

    #[test]
    fn smtp_urls_say_how_the_connection_is_protected_and_who_logs_in() {
        match smtp("smtps://mailer%40shop:p%40ss%3Aword@mail.example.com") {
            Transport::Smtp {
                host,
                port,
                security,
                credentials: Some(c),
                ..
            } => {
                assert_eq!(
                    (host.as_str(), port, security),
                    ("mail.example.com", 465, SmtpSecurity::Tls)
                );
                assert_eq!(c.user, "mailer@shop");
                assert_eq!(c.password, "p@ss:word");
                let shown = format!("{c:?}");
                assert!(!shown.contains("p@ss"), "{shown}");
            }
            other => panic!("{other:?}"),
        }
        match smtp("smtp+starttls://relay.example.com:2525") {
            Transport::Smtp {
                port,
                security,
                credentials: None,
                ..
            } => {
                assert_eq!((port, security), (2525, SmtpSecurity::StartTls));
            }
            other => panic!("{other:?}"),
        }
        match smtp("smtp://127.0.0.1:1025") {
            Transport::Smtp { security, .. } => assert_eq!(security, SmtpSecurity::Plain),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_bad_smtp_url_is_refused_without_echoing_its_password() {
        for bad in [
            "http://u:hunter2@mail.example.com",
            "smtps://u:hunter2@",
            "mail.example.com:25",
        ] {
            let err = Transport::from_config(Some(bad), PathBuf::new(), "a@b.c")
                .expect_err(bad)
                .to_string();
            assert!(!err.contains("hunter2"), "{err}");
        }
    }
}
