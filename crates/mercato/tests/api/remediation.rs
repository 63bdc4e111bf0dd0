//! Repairing a pricing incident: a seeded incident (`demo incident`) found by
//! the scan exactly, settled once per adjustment (also when `settle` is
//! SIGKILLed again and again), every customer told by e-mail through a real
//! SMTP server (aiosmtpd), the customers' links applied once, and store credit
//! spent by checkout without ever going below zero.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use mercato::cells::{Cells, MerchantDb};
use mercato::demo::incident::{seed, Facts, Options};
use mercato::payments::SandboxProvider;
use mercato::remediation::{self, LinkPurpose, ReminderPolicy, SettleOptions, Settlement};
use mercato::tenancy::MerchantId;
use rand::Rng;
use serde_json::json;
use sqlx::PgPool;
use tokio::io::{AsyncBufReadExt, BufReader};
use uuid::Uuid;

use crate::helpers::{TestApp, TestDatabase};
use crate::webhooks::python;

/// aiosmtpd writing every message it accepts to a directory.
pub(crate) struct SmtpSink {
    _child: tokio::process::Child,
    dir: PathBuf,
    pub(crate) url: String,
}

/// A message as the sink received it: headers unfolded, bodies decoded.
#[derive(Debug, Clone)]
pub(crate) struct Mail {
    pub(crate) from: String,
    pub(crate) to: String,
    pub(crate) subject: String,
    message_id: String,
    pub(crate) text: String,
}

impl SmtpSink {
    pub(crate) async fn start() -> SmtpSink {
        let dir = std::env::temp_dir().join(format!("mercato-smtp-{}", Uuid::now_v7().simple()));
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/smtp_sink.py");
        let mut child = tokio::process::Command::new(python())
            .arg(script)
            .arg(&dir)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the SMTP sink starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .await
            .expect("the sink prints its port");
        let port = line
            .trim()
            .strip_prefix("PORT ")
            .expect("PORT line")
            .to_owned();
        SmtpSink {
            _child: child,
            dir,
            url: format!("smtp://127.0.0.1:{port}"),
        }
    }

    pub(crate) fn messages(&self) -> Vec<Mail> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        paths.retain(|p| p.extension().is_some_and(|e| e == "eml"));
        paths.sort();
        paths
            .iter()
            .map(|p| parse_mail(&std::fs::read_to_string(p).expect("read a message")))
            .collect()
    }

    /// Waits until at least `n` messages arrived (the service's sender runs every tick).
    pub(crate) async fn wait_for(&self, n: usize) -> Vec<Mail> {
        for _ in 0..100 {
            let got = self.messages();
            if got.len() >= n {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.messages()
    }
}

fn parse_mail(raw: &str) -> Mail {
    let raw = raw.replace("\r\n", "\n");
    let (head, body) = raw.split_once("\n\n").unwrap_or((&raw, ""));
    let unfolded = head.replace("\n ", " ").replace("\n\t", " ");
    let header = |name: &str| {
        unfolded
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .unwrap_or_default()
            .to_owned()
    };
    // The plain-text part, quoted-printable decoded.
    let text = body
        .split("Content-Type: text/plain")
        .nth(1)
        .and_then(|p| p.split_once("\n\n"))
        .map(|(_, rest)| rest.split("\n--").next().unwrap_or_default())
        .unwrap_or_default();
    Mail {
        from: header("From"),
        to: header("To"),
        subject: header("Subject"),
        message_id: header("Message-ID"),
        text: quoted_printable(text),
    }
}

fn quoted_printable(s: &str) -> String {
    let joined = s.replace("=\n", "");
    let bytes = joined.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'=' && i + 2 < bytes.len() + 1 {
            if let Some(b) = std::str::from_utf8(&bytes[i + 1..(i + 3).min(bytes.len())])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn euros(minor: i64) -> String {
    format!("{}.{:02} EUR", minor / 100, minor % 100)
}

/// The service, its mail sender pointed at `sink` (`settle` and `serve` share
/// one outbox: whichever claims a message sends it, so both use one transport).
pub(crate) async fn app_mailing_to(sink: &SmtpSink) -> TestApp {
    let db = TestDatabase::create().await;
    let mut config = db.config();
    config.smtp_url = Some(sink.url.clone());
    TestApp::spawn_with(db, config).await
}

async fn seed_incident(owner: &PgPool, orders: i64, weeks: i64, seed_value: u64) -> Facts {
    let opts = Options {
        orders,
        weeks,
        seed: seed_value,
        json: true,
        database: Default::default(),
        data_dir: PathBuf::from("unused"),
    };
    seed(owner, &opts, false).await.expect("the incident seeds")
}

/// Seeds, opens, scans and reports: an incident ready to settle.
async fn scanned_incident(owner: &PgPool, orders: i64) -> (Facts, MerchantId, Uuid) {
    let facts = seed_incident(owner, orders, 3, 7).await;
    let merchant = MerchantId(facts.merchant_id);
    let id = remediation::open(
        &merchant_db(owner, merchant).await,
        facts.from,
        facts.to,
        "v3",
        "v2",
    )
    .await
    .expect("the incident opens");
    let provider = SandboxProvider::new(owner.clone(), Duration::from_millis(50));
    remediation::scan(
        &merchant_db(owner, merchant).await,
        id,
        &provider,
        97,
        |_, _| {},
    )
    .await
    .expect("the scan runs");
    let report = remediation::report(&merchant_db(owner, merchant).await, id)
        .await
        .expect("report");
    assert!(report.settle_allowed, "{report:?}");
    (facts, merchant, id)
}

/// The merchant's database as a command resolves it, over the owner's pool.
async fn merchant_db(owner: &PgPool, merchant: MerchantId) -> MerchantDb {
    Cells::of_owners(owner.clone(), [])
        .merchant_db_for_job(merchant)
        .await
        .expect("the directory answers")
}

async fn settlement(
    owner: &PgPool,
    merchant: MerchantId,
    reminders: u32,
    wait_ms: u64,
) -> Settlement {
    Settlement {
        db: merchant_db(owner, merchant).await,
        provider: Arc::new(SandboxProvider::new(
            owner.clone(),
            Duration::from_millis(50),
        )),
        options: SettleOptions {
            provider_rate: 10_000.0,
            reminders: ReminderPolicy {
                reminders,
                first_wait: Duration::from_millis(wait_ms),
            },
            ..Default::default()
        },
    }
}

async fn scalar(owner: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(sql)
        .fetch_one(owner)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

#[tokio::test]
async fn the_scan_finds_exactly_the_seeded_mispriced_orders_and_the_sums_reconcile() {
    let app = TestApp::spawn().await;
    let facts = seed_incident(&app.owner, 900, 3, 11).await;
    assert!(
        facts.underpaid > 20 && facts.overpaid > 2 * facts.underpaid - 40,
        "{facts:?}"
    );
    let merchant = MerchantId(facts.merchant_id);
    let id = remediation::open(
        &merchant_db(&app.owner, merchant).await,
        facts.from,
        facts.to,
        "v3",
        "v2",
    )
    .await
    .expect("opens");
    let provider = SandboxProvider::new(app.owner.clone(), Duration::from_millis(50));

    // Before the scan and before its report, settle refuses (nothing moves).
    let sink = SmtpSink::start().await;
    let sender = mercato::mail::Sender::new(
        mercato::mail::Transport::from_config(Some(&sink.url), PathBuf::new(), "shop@example.com")
            .expect("transport"),
    );
    let refused = settlement(&app.owner, merchant, 1, 100)
        .await
        .run(id, &sender, |_| {})
        .await;
    assert!(
        matches!(refused, Err(remediation::RemediationError::NotScanned(_))),
        "{refused:?}"
    );

    // A scan killed (SIGKILL) mid-way resumes from its cursor.
    let mut cut = false;
    for ms in [250u64, 400, 600, 900, 1300] {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_mercato"))
            .args([
                "remediate",
                "scan",
                "--batch",
                "7",
                "--incident",
                &id.to_string(),
            ])
            .args(["--database-url", &app.db.owner_url])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("scan starts");
        tokio::time::sleep(Duration::from_millis(ms)).await;
        let _ = child.start_kill();
        let _ = child.wait().await;
        let (scanned, finished): (i64, bool) = sqlx::query_as(
            "select scanned, scan_finished_at is not null from remediation_incidents",
        )
        .fetch_one(&app.owner)
        .await
        .expect("incident");
        if finished {
            break;
        }
        if scanned > 0 {
            assert_eq!(
                scalar(&app.owner, "select count(*) from order_adjustments").await,
                scanned,
                "the adjustments and the cursor commit together"
            );
            cut = true;
            break;
        }
    }
    // What the command did is in the merchant's audit trail, by the shell's user.
    let by_command = scalar(
        &app.owner,
        "select count(*) from audit_log where action = 'remediation.scan' and actor_kind = 'operator'
           and actor like 'cli:%' and target_type = 'order_adjustments' and operation = 'insert'",
    )
    .await;
    assert_eq!(
        by_command,
        scalar(&app.owner, "select count(*) from order_adjustments").await,
        "every adjustment the command made has its record"
    );
    let mut pages = 0;
    let resumed = remediation::scan(
        &merchant_db(&app.owner, merchant).await,
        id,
        &provider,
        50,
        |_, _| pages += 1,
    )
    .await
    .expect("scan");
    assert_eq!(resumed.scanned_total, facts.orders_in_window);
    if cut {
        assert!(
            resumed.scanned < facts.orders_in_window,
            "resumed, not restarted"
        );
    }
    assert!(pages >= 1);
    let again = remediation::scan(
        &merchant_db(&app.owner, merchant).await,
        id,
        &provider,
        50,
        |_, _| {},
    )
    .await
    .expect("a rerun");
    assert_eq!(again.scanned, 0, "a finished scan has nothing left");
    // A rerun of the pages themselves adds nothing: one row per incident and order.
    sqlx::query("update remediation_incidents set scan_after_at = null, scan_after_id = null, scan_finished_at = null, scanned = 0")
        .execute(&app.owner)
        .await
        .expect("rewind");
    remediation::scan(
        &merchant_db(&app.owner, merchant).await,
        id,
        &provider,
        64,
        |_, _| {},
    )
    .await
    .expect("a rewound scan");
    assert_eq!(
        scalar(&app.owner, "select count(*) from order_adjustments").await,
        facts.orders_in_window
    );

    let refused = settlement(&app.owner, merchant, 1, 100)
        .await
        .run(id, &sender, |_| {})
        .await;
    assert!(
        matches!(refused, Err(remediation::RemediationError::NotReported(_))),
        "{refused:?}"
    );
    assert_eq!(
        scalar(
            &app.owner,
            "select count(*) from payments where idempotency_key like 'adj%'"
        )
        .await,
        0
    );

    let report = remediation::report(&merchant_db(&app.owner, merchant).await, id)
        .await
        .expect("report");
    assert_eq!(report.orders_in_window, facts.orders_in_window);
    assert_eq!(report.adjustments, facts.orders_in_window);
    assert_eq!(report.underpaid.orders, facts.underpaid);
    assert_eq!(report.underpaid.amount, facts.underpaid_sum);
    assert_eq!(report.overpaid.orders, facts.overpaid);
    assert_eq!(report.overpaid.amount, facts.overpaid_sum);
    assert_eq!(
        report.correct.orders,
        facts.orders_in_window - facts.underpaid - facts.overpaid
    );
    assert!(report.sums_reconcile && report.every_order_scanned && report.settle_allowed);
    for (status, n) in &facts.underpaid_by_method {
        let found: i64 = report
            .lines
            .iter()
            .filter(|l| {
                l.class.as_str() == "underpaid" && l.payment_method_status.as_str() == status
            })
            .map(|l| l.orders)
            .sum();
        assert_eq!(found, *n, "underpaid with {status}");
    }
    // Each adjustment is its order's: charged is what the order charged, and
    // the customer is the order's.
    assert_eq!(
        scalar(&app.owner, "select count(*) from order_adjustments a join orders o on o.merchant_id = a.merchant_id and o.id = a.order_id where a.charged <> o.total_amount or a.payment_reference is distinct from o.payment_id or a.customer_id is distinct from o.customer_id or a.customer_id is null").await,
        0
    );
    let largest = &report.largest_deltas[0];
    assert!(report
        .largest_deltas
        .iter()
        .all(|d| d.delta.abs() <= largest.delta.abs()));
}

#[tokio::test]
async fn an_incident_is_refused_with_nothing_written_for_bad_versions_and_windows() {
    let app = TestApp::spawn().await;
    let facts = seed_incident(&app.owner, 200, 3, 3).await;
    let m = MerchantId(facts.merchant_id);
    let open = |from, to, bad: &'static str, fixed: &'static str| {
        let owner = app.owner.clone();
        async move { remediation::open(&merchant_db(&owner, m).await, from, to, bad, fixed).await }
    };
    let err = |r: Result<Uuid, remediation::RemediationError>| r.expect_err("refused").to_string();
    assert!(err(open(facts.from, facts.to, "v9", "v2").await).contains("--bad-version"));
    assert!(err(open(facts.from, facts.to, "v3", "v7").await).contains("--fixed-version"));
    assert!(err(open(facts.from, facts.to, "v3", "v3").await).contains("withdrawn"));
    assert!(err(open(facts.to, facts.from, "v3", "v2").await).contains("before"));
    let before_any = facts.from - chrono::Duration::days(400);
    assert!(err(open(
        before_any,
        before_any + chrono::Duration::days(1),
        "v3",
        "v2"
    )
    .await)
    .contains("no confirmed orders"));
    assert!(err(open(
        facts.from,
        Utc::now() + chrono::Duration::hours(1),
        "v3",
        "v2"
    )
    .await)
    .contains("still open"));
    assert_eq!(
        scalar(&app.owner, "select count(*) from remediation_incidents").await,
        0
    );
    open(facts.from, facts.to, "v3", "v2").await.expect("opens");
    let overlapping = open(
        facts.from + chrono::Duration::days(1),
        facts.to + chrono::Duration::days(1),
        "v3",
        "v2",
    )
    .await;
    assert!(err(overlapping).contains("overlaps"));
    assert_eq!(
        scalar(&app.owner, "select count(*) from remediation_incidents").await,
        1
    );

    // The command line says it in one line on stderr, with a non-zero exit.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_mercato"))
        .args([
            "remediate",
            "open",
            "--merchant",
            &facts.merchant_slug,
            "--from",
        ])
        .arg(facts.from.to_rfc3339())
        .arg("--to")
        .arg(facts.to.to_rfc3339())
        .args([
            "--bad-version",
            "v3",
            "--fixed-version",
            "v2",
            "--database-url",
            &app.db.owner_url,
        ])
        .output()
        .await
        .expect("runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("overlaps open incident"), "{stderr}");
}

#[tokio::test]
async fn settle_charges_asks_reminds_escalates_and_offers_once_and_every_email_arrives() {
    let sink = SmtpSink::start().await;
    let app = app_mailing_to(&sink).await;
    let (facts, merchant, id) = scanned_incident(&app.owner, 700).await;
    let sender = mercato::mail::Sender::new(
        mercato::mail::Transport::from_config(Some(&sink.url), PathBuf::new(), "shop@example.com")
            .expect("transport"),
    );
    let settle = settlement(&app.owner, merchant, 2, 150).await;
    // The first run acts on everything; the later ones send the reminders as
    // they fall due (150 ms, then 300 ms), then escalate.
    let first = settle.run(id, &sender, |_| {}).await.expect("settles");
    for _ in 0..30 {
        let left = scalar(
            &app.owner,
            "select count(*) from order_adjustments where state = 'awaiting_payment_method'",
        )
        .await;
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(120)).await;
        settle
            .run(id, &sender, |_| {})
            .await
            .expect("settles again");
    }
    let valid = facts.underpaid_by_method.get("valid").copied().unwrap_or(0);
    let unchargeable = facts.underpaid - valid;
    assert_eq!(first.charged as i64, valid);
    assert_eq!(first.offered_choice as i64, facts.overpaid);

    let states: BTreeMap<(String, String), i64> = sqlx::query_as::<_, (String, String, i64)>(
        "select class, state, count(*) from order_adjustments group by class, state",
    )
    .fetch_all(&app.owner)
    .await
    .expect("states")
    .into_iter()
    .map(|(c, s, n)| ((c, s), n))
    .collect();
    let at = |c: &str, s: &str| {
        states
            .get(&(c.to_owned(), s.to_owned()))
            .copied()
            .unwrap_or(0)
    };
    assert_eq!(at("underpaid", "settled"), valid, "{states:?}");
    assert_eq!(at("underpaid", "escalated"), unchargeable, "{states:?}");
    assert_eq!(
        at("overpaid", "awaiting_choice"),
        facts.overpaid,
        "{states:?}"
    );
    assert_eq!(
        at("correct", "nothing_to_do"),
        facts.orders_in_window - facts.underpaid - facts.overpaid
    );
    assert_eq!(scalar(&app.owner, "select count(*) from order_adjustments where state = 'escalated' and reminders_sent <> 2").await, 0);

    // Each chargeable underpaid order charged once, off-session, for its difference.
    assert_eq!(
        scalar(&app.owner, "select count(*) from order_adjustments a join payments p on p.merchant_id = a.merchant_id and p.idempotency_key = 'adj_' || replace(a.id::text, '-', '') || '_charge' where p.status = 'captured' and p.off_session and p.amount = a.delta and a.state = 'settled'").await,
        valid
    );
    assert_eq!(scalar(&app.owner, "select count(*) from payments where idempotency_key like 'adj%' and status = 'captured'").await, valid);
    assert_eq!(
        scalar(&app.owner, "select coalesce(sum(amount), 0)::bigint from payments where idempotency_key like 'adj%' and status = 'captured'").await,
        scalar(&app.owner, "select coalesce(sum(delta), 0)::bigint from order_adjustments where class = 'underpaid' and payment_method_status = 'valid'").await
    );
    assert_eq!(
        scalar(
            &app.owner,
            "select count(*) from events where type = 'adjustment.settled'"
        )
        .await,
        valid
    );
    // Nothing for correct orders.
    assert_eq!(scalar(&app.owner, "select count(*) from remediation_effects e join order_adjustments a on a.id = e.adjustment_id where a.class = 'correct'").await, 0);
    // The apology code is a rule of the pricing rules, for the charged customers only.
    let rules: String = sqlx::query_scalar(
        "select rules::text from pricing_rule_revisions order by revision desc limit 1",
    )
    .fetch_one(&app.owner)
    .await
    .expect("rules");
    assert!(
        rules.contains("apology-") && rules.contains("customer_email_in"),
        "{rules}"
    );

    // The support queue lists every escalated case.
    let mut tx = mercato::db::TenantTx::begin(&app.owner, merchant)
        .await
        .expect("tx");
    let key =
        mercato::tenancy::issue_api_key(&mut tx, &mercato::tenancy::scopes::Access::Full, None)
            .await
            .expect("key")
            .key
            .to_string();
    tx.commit().await.expect("commit");
    let listed = app.get("/v1/support/escalations?limit=500", &key).await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    assert_eq!(
        listed.body["data"].as_array().map(Vec::len),
        Some(unchargeable as usize)
    );
    // Another merchant sees none of them.
    let other = app.create_merchant("someone-else").await;
    let theirs = app.get("/v1/support/escalations", &other.key).await;
    assert_eq!(theirs.body["data"].as_array().map(Vec::len), Some(0));

    // Every e-mail arrived once: one per adjustment and step.
    let expected = valid + 3 * unchargeable + facts.overpaid;
    let mails = sink.wait_for(expected as usize).await;
    let outbox: Vec<(String, i64, Option<String>)> =
        sqlx::query_as("select status, count(*), max(last_error) from mail_outbox group by status")
            .fetch_all(&app.owner)
            .await
            .expect("outbox");
    assert_eq!(mails.len() as i64, expected, "outbox: {outbox:?}");
    let ids: BTreeSet<&str> = mails.iter().map(|m| m.message_id.as_str()).collect();
    assert_eq!(ids.len(), mails.len(), "no message twice");
    let count = |prefix: &str| {
        mails
            .iter()
            .filter(|m| m.subject.starts_with(prefix))
            .count() as i64
    };
    assert_eq!(count("We corrected the price"), valid);
    assert_eq!(count("About the price"), unchargeable);
    assert_eq!(count("Reminder 1:"), unchargeable);
    assert_eq!(count("Reminder 2:"), unchargeable);
    assert_eq!(count("You paid too much"), facts.overpaid);
    // Each names its order and its amounts.
    let rows: Vec<(Uuid, String, i64, i64, String)> = sqlx::query_as(
        "select order_id, customer_email, charged, expected, class from order_adjustments where class <> 'correct'",
    )
    .fetch_all(&app.owner)
    .await
    .expect("adjustments");
    for (order, email, charged, expected, class) in rows {
        let mine: Vec<&Mail> = mails
            .iter()
            .filter(|m| m.subject.contains(&order.to_string()))
            .collect();
        assert!(!mine.is_empty(), "no mail for order {order}");
        for m in mine {
            assert_eq!(m.to, email);
            assert!(
                m.text.contains(&euros(charged)) || class == "correct",
                "{}",
                m.text
            );
            assert!(
                m.text.contains(&euros((expected - charged).abs())),
                "{}",
                m.text
            );
            if m.subject.starts_with("We corrected") {
                assert!(m.text.contains("SORRY-"), "{}", m.text);
            }
            if m.subject.starts_with("You paid too much") {
                assert_eq!(m.text.matches("/choice?token=").count(), 3, "{}", m.text);
            }
        }
    }
}

/// The link's token for an adjustment, as the e-mail carries it.
pub(crate) async fn link_token(
    owner: &PgPool,
    adjustment: Uuid,
    purpose: LinkPurpose,
    expires: i64,
) -> String {
    let (merchant, secret): (Uuid, Vec<u8>) = sqlx::query_as(
        "select a.merchant_id, i.link_secret from order_adjustments a join remediation_incidents i on i.merchant_id = a.merchant_id and i.id = a.incident_id where a.id = $1",
    )
    .bind(adjustment)
    .fetch_one(owner)
    .await
    .expect("secret");
    remediation::sign_link(&secret, merchant, adjustment, purpose, expires)
}

#[tokio::test]
async fn a_customers_link_applies_once_and_refuses_tampering_and_expiry() {
    let sink = SmtpSink::start().await;
    let app = app_mailing_to(&sink).await;
    let (_facts, merchant, id) = scanned_incident(&app.owner, 500).await;
    let sender = mercato::mail::Sender::new(
        mercato::mail::Transport::from_config(Some(&sink.url), PathBuf::new(), "shop@example.com")
            .expect("transport"),
    );
    settlement(&app.owner, merchant, 0, 10)
        .await
        .run(id, &sender, |_| {})
        .await
        .expect("settles");
    let overpaid: Vec<(Uuid, Uuid, i64, String)> = sqlx::query_as(
        "select id, payment_reference, delta, customer_email from order_adjustments where state = 'awaiting_choice' order by id limit 3",
    )
    .fetch_all(&app.owner)
    .await
    .expect("overpaid");
    assert_eq!(overpaid.len(), 3);
    let later = Utc::now().timestamp() + 3600;
    let post = |adjustment: Uuid, body: serde_json::Value| {
        let app = &app;
        async move {
            app.request(
                reqwest::Method::POST,
                &format!("/v1/adjustments/{adjustment}/choice"),
                None,
                Some(body),
            )
            .await
        }
    };

    // Refund: once, to the original payment.
    let (refund_adj, payment, delta, _) = overpaid[0].clone();
    let token = link_token(&app.owner, refund_adj, LinkPurpose::Choice, later).await;
    let first = post(refund_adj, json!({"token": token, "choice": "refund"})).await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.body["state"], "settled");
    assert_eq!(first.body["already_applied"], false);
    let again = post(refund_adj, json!({"token": token, "choice": "refund"})).await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.body["already_applied"], true);
    post(refund_adj, json!({"token": token, "choice": "credit"}))
        .await
        .assert_problem(409, "choice-already-made");
    let refunded: i64 = sqlx::query_scalar("select refunded_amount from payments where id = $1")
        .bind(payment)
        .fetch_one(&app.owner)
        .await
        .expect("payment");
    assert_eq!(refunded, -delta, "refunded once");

    // Credit: once, to the customer's wallet.
    let (credit_adj, _, delta, email) = overpaid[1].clone();
    let token = link_token(&app.owner, credit_adj, LinkPurpose::Choice, later).await;
    for _ in 0..3 {
        let r = post(credit_adj, json!({"token": token, "choice": "credit"})).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let balance: i64 =
        sqlx::query_scalar("select balance from wallets where customer_key = lower($1)")
            .bind(&email)
            .fetch_one(&app.owner)
            .await
            .expect("wallet");
    assert_eq!(balance, -delta, "credited once");

    // Tampered, another adjustment's, or expired: refused, nothing applied.
    let (none_adj, _, _, _) = overpaid[2].clone();
    let token = link_token(&app.owner, none_adj, LinkPurpose::Choice, later).await;
    let mut tampered = token.clone().into_bytes();
    let last = tampered.len() - 3;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).expect("ascii");
    post(none_adj, json!({"token": tampered, "choice": "none"}))
        .await
        .assert_problem(403, "forbidden");
    post(credit_adj, json!({"token": token, "choice": "none"}))
        .await
        .assert_problem(403, "forbidden");
    let as_payment_link = link_token(&app.owner, none_adj, LinkPurpose::PaymentMethod, later).await;
    post(
        none_adj,
        json!({"token": as_payment_link, "choice": "none"}),
    )
    .await
    .assert_problem(403, "forbidden");
    let expired = link_token(
        &app.owner,
        none_adj,
        LinkPurpose::Choice,
        Utc::now().timestamp() - 1,
    )
    .await;
    post(none_adj, json!({"token": expired, "choice": "none"}))
        .await
        .assert_problem(410, "link-expired");
    let bad_choice = post(none_adj, json!({"token": token, "choice": "cash"})).await;
    bad_choice.assert_problem(422, "validation-error");
    assert_eq!(bad_choice.error_fields(), ["choice"]);
    let state: String = sqlx::query_scalar("select state from order_adjustments where id = $1")
        .bind(none_adj)
        .fetch_one(&app.owner)
        .await
        .expect("state");
    assert_eq!(state, "awaiting_choice");
    let r = post(none_adj, json!({"token": token, "choice": "none"})).await;
    assert_eq!(r.body["state"], "settled");

    // The refund and credit messages are sent by the service's mail sender.
    let mut mails = sink.messages();
    for _ in 0..100 {
        let told = |prefix: &str| mails.iter().any(|m| m.subject.starts_with(prefix));
        if told("Your refund") && told("Your store credit") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        mails = sink.messages();
    }
    let subjects: Vec<&str> = mails.iter().map(|m| m.subject.as_str()).collect();
    assert!(
        subjects.iter().any(|s| s.starts_with("Your refund")),
        "{subjects:?}"
    );
    assert!(
        subjects.iter().any(|s| s.starts_with("Your store credit")),
        "{subjects:?}"
    );

    // An underpaid customer without a mandate gives a method through their link: charged once.
    let (asked, delta): (Uuid, i64) = sqlx::query_as(
        "select id, delta from order_adjustments where state = 'escalated' or state = 'awaiting_payment_method' order by id limit 1",
    )
    .fetch_one(&app.owner)
    .await
    .expect("an unchargeable underpaid order");
    let token = link_token(&app.owner, asked, LinkPurpose::PaymentMethod, later).await;
    let path = format!("/v1/adjustments/{asked}/payment-method");
    let declined = app
        .request(
            reqwest::Method::POST,
            &path,
            None,
            Some(json!({"token": token, "payment_method": "pm_card_declined"})),
        )
        .await;
    declined.assert_problem(402, "payment-failed");
    let paid = app
        .request(
            reqwest::Method::POST,
            &path,
            None,
            Some(json!({"token": token, "payment_method": "pm_card_ok"})),
        )
        .await;
    assert_eq!(paid.status, 200, "{}", paid.body);
    assert_eq!(paid.body["state"], "settled");
    let repeat = app
        .request(
            reqwest::Method::POST,
            &path,
            None,
            Some(json!({"token": token, "payment_method": "pm_card_slow"})),
        )
        .await;
    assert_eq!(repeat.body["already_applied"], true, "{}", repeat.body);
    let charged: i64 = sqlx::query_scalar(
        "select coalesce(sum(amount), 0)::bigint from payments where idempotency_key like $1 and status = 'captured'",
    )
    .bind(format!("adj_{}_customer_charge%", asked.simple()))
    .fetch_one(&app.owner)
    .await
    .expect("charges");
    assert_eq!(charged, delta, "charged once, the difference");
}

/// Runs `mercato remediate settle` as a child process and kills it (SIGKILL)
/// after `kill_after`, or lets it finish; returns whether it finished.
async fn settle_child(
    db_url: &str,
    incident: Uuid,
    smtp: &str,
    kill_after: Option<Duration>,
) -> bool {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_mercato"))
        .args([
            "remediate",
            "settle",
            "--json",
            "--rate",
            "30",
            "--reminders",
            "1",
            "--reminder-wait",
            "0.4",
            "--retry-after",
            "0.2",
        ])
        .args([
            "--incident",
            &incident.to_string(),
            "--database-url",
            db_url,
            "--smtp-url",
            smtp,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("settle starts");
    match kill_after {
        Some(after) => {
            tokio::select! {
                status = child.wait() => status.is_ok_and(|s| s.success()),
                _ = tokio::time::sleep(after) => {
                    child.start_kill().expect("SIGKILL");
                    let _ = child.wait().await;
                    false
                }
            }
        }
        None => child.wait().await.is_ok_and(|s| s.success()),
    }
}

#[tokio::test]
async fn settle_killed_at_random_points_never_charges_refunds_credits_or_mails_twice() {
    let sink = SmtpSink::start().await;
    let app = app_mailing_to(&sink).await;
    let (facts, _merchant, id) = scanned_incident(&app.owner, 1500).await;
    // Some overpaid customers answered already (their choice waits to be carried out).
    sqlx::query(
        "update order_adjustments set state = 'choice_made',
                choice = case when (row_number) % 2 = 0 then 'refund' else 'credit' end
         from (select id as aid, row_number() over (order by id) from order_adjustments where class = 'overpaid') n
         where id = n.aid and n.row_number % 3 <> 0",
    )
    .execute(&app.owner)
    .await
    .expect("choices");
    let refunds = scalar(
        &app.owner,
        "select count(*) from order_adjustments where choice = 'refund'",
    )
    .await;
    let credits = scalar(
        &app.owner,
        "select count(*) from order_adjustments where choice = 'credit'",
    )
    .await;
    assert!(refunds > 5 && credits > 5);

    let mut killed = 0;
    let mut finished_early = 0;
    for _ in 0..20 {
        let after = Duration::from_millis(rand::rng().random_range(150..900));
        if settle_child(&app.db.owner_url, id, &sink.url, Some(after)).await {
            finished_early += 1;
        } else {
            killed += 1;
        }
    }
    // Then to the end: reminders fall due and cases escalate.
    for _ in 0..40 {
        assert!(
            settle_child(&app.db.owner_url, id, &sink.url, None).await,
            "a full run succeeds"
        );
        let open_work = scalar(&app.owner, "select count(*) from order_adjustments where state in ('pending', 'choice_made', 'awaiting_payment_method')").await;
        if open_work == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!("settle: {killed} runs killed, {finished_early} finished before their kill");
    assert!(killed >= 10, "most kills landed mid-run ({killed} of 20)");

    let valid = facts.underpaid_by_method.get("valid").copied().unwrap_or(0);
    // Charges: exactly one per chargeable underpaid order, for the difference.
    assert_eq!(scalar(&app.owner, "select count(*) from payments where idempotency_key like 'adj%' and status = 'captured'").await, valid);
    assert_eq!(
        scalar(&app.owner, "select count(*) from order_adjustments a where class = 'underpaid' and payment_method_status = 'valid' and state = 'settled' and (select count(*) from payments p where p.merchant_id = a.merchant_id and p.idempotency_key like 'adj_' || replace(a.id::text, '-', '') || '%' and p.amount = a.delta and p.status = 'captured') = 1").await,
        valid
    );
    // Refunds: each chosen one once, to the order's payment.
    assert_eq!(
        scalar(
            &app.owner,
            "select count(*) from payment_refunds where idempotency_key like 'adj%'"
        )
        .await,
        refunds
    );
    assert_eq!(
        scalar(&app.owner, "select count(*) from order_adjustments a join payments p on p.merchant_id = a.merchant_id and p.id = a.payment_reference where a.choice = 'refund' and a.state = 'settled' and p.refunded_amount = -a.delta").await,
        refunds
    );
    // Credits: each once; every wallet holds exactly its customer's credits.
    assert_eq!(
        scalar(
            &app.owner,
            "select count(*) from wallet_entries where idempotency_key like 'adj%'"
        )
        .await,
        credits
    );
    assert_eq!(
        scalar(&app.owner, "select count(*) from wallets w where balance <> (select coalesce(-sum(delta), 0) from order_adjustments a where a.choice = 'credit' and lower(a.customer_email) = w.customer_key)").await,
        0
    );
    // Nothing for correct orders; nothing left half-done.
    assert_eq!(scalar(&app.owner, "select count(*) from remediation_effects e join order_adjustments a on a.id = e.adjustment_id where a.class = 'correct'").await, 0);
    assert_eq!(
        scalar(
            &app.owner,
            "select count(*) from remediation_effects where status = 'started'"
        )
        .await,
        0
    );
    assert_eq!(
        scalar(&app.owner, "select count(*) from order_adjustments where state in ('pending', 'choice_made', 'awaiting_payment_method')").await,
        0
    );
    // E-mail: at most once per adjustment and step. A message whose sender was
    // killed mid-exchange stays `sending`/`unknown` and is never sent again.
    let mails = sink.messages();
    let ids: BTreeSet<&str> = mails.iter().map(|m| m.message_id.as_str()).collect();
    assert_eq!(ids.len(), mails.len(), "a message arrived twice");
    let outbox = scalar(&app.owner, "select count(*) from mail_outbox").await;
    let sent = scalar(
        &app.owner,
        "select count(*) from mail_outbox where status = 'sent'",
    )
    .await;
    let uncertain = scalar(
        &app.owner,
        "select count(*) from mail_outbox where status in ('sending', 'unknown')",
    )
    .await;
    assert!(
        mails.len() as i64 >= sent && mails.len() as i64 <= sent + uncertain,
        "{} at the sink, {sent} sent, {uncertain} uncertain",
        mails.len()
    );
    assert_eq!(outbox, sent + uncertain, "every message left the outbox");
    eprintln!(
        "{} adjustments, {valid} charged, {refunds} refunded, {credits} credited, {} e-mails ({uncertain} cut mid-send, not re-sent)",
        facts.orders_in_window,
        mails.len()
    );
}

#[tokio::test]
async fn store_credit_is_spent_at_checkout_first_and_never_below_zero_under_concurrent_checkouts() {
    let app = TestApp::spawn().await;
    let shop = app.merchant_with_stock("wallet-shop", "MUG", 100).await;
    let credit = |amount: i64, key: &'static str| {
        let app = &app;
        let shop = &shop;
        async move {
            let mut tx = app.tenant_tx(shop).await;
            let new = mercato::wallet::credit(&mut tx, "Ann@Example.com", amount, "EUR", key)
                .await
                .expect("credit");
            tx.commit().await.expect("commit");
            new
        }
    };
    assert!(credit(3_000, "gift-1").await);
    assert!(!credit(3_000, "gift-1").await, "the same key credits once");

    let checkouts = (0..10).map(|_| {
        let app = &app;
        let shop = &shop;
        async move {
            app.post(
                "/v1/checkouts",
                &shop.key,
                json!({"customer": {"email": "ann@example.com"}, "items": [{"sku": "MUG", "quantity": 1}], "payment_method": "pm_card_ok"}),
            )
            .await
        }
    });
    let answers = futures_util::future::join_all(checkouts).await;
    let mut from_credit = 0;
    for a in &answers {
        assert_eq!(a.status, 201, "{}", a.body);
        from_credit += a.body["store_credit"]["amount"]
            .as_i64()
            .expect("store credit");
    }
    let price = answers[0].body["total"]["amount"].as_i64().expect("total");
    assert_eq!(
        from_credit,
        3_000.min(10 * price),
        "the credit is spent, once"
    );
    assert_eq!(
        scalar(&app.owner, "select balance from wallets").await,
        3_000 - from_credit
    );
    assert_eq!(
        scalar(&app.owner, "select sum(amount)::bigint from wallet_entries").await,
        3_000 - from_credit
    );
    // The card pays the rest of each order, and only the rest.
    assert_eq!(
        scalar(&app.owner, "select count(*) from orders o join payments p on p.merchant_id = o.merchant_id and p.id = o.payment_id where p.amount <> o.total_amount - o.wallet_amount").await,
        0
    );
    // A refund of an order the credit paid goes back to the wallet, not the card.
    let paid_by_credit = answers
        .iter()
        .find(|a| a.body["store_credit"]["amount"] == a.body["total"]["amount"])
        .expect("an order paid by store credit");
    let order = paid_by_credit.body["id"].as_str().expect("id");
    let balance = scalar(&app.owner, "select balance from wallets").await;
    let refund = app
        .post(
            &format!("/v1/orders/{order}/refunds"),
            &shop.key,
            json!({"lines": [{"sku": "MUG", "quantity": 1}]}),
        )
        .await;
    assert_eq!(refund.status, 201, "{}", refund.body);
    assert_eq!(
        scalar(&app.owner, "select balance from wallets").await,
        balance + price
    );
    assert_eq!(
        scalar(
            &app.owner,
            "select coalesce(sum(refunded_amount), 0)::bigint from payments"
        )
        .await,
        0
    );
    // A checkout that fails gives its credit back.
    let from_credit = from_credit - price;
    assert!(credit(500, "gift-2").await);
    let declined = app
        .post(
            "/v1/checkouts",
            &shop.key,
            json!({"customer": {"email": "ann@example.com"}, "items": [{"sku": "MUG", "quantity": 1}], "payment_method": "pm_card_declined"}),
        )
        .await;
    declined.assert_problem(402, "payment-failed");
    assert_eq!(
        scalar(&app.owner, "select balance from wallets").await,
        3_000 - from_credit + 500
    );
}
