//! `mercato remediate open|scan|report|settle|status`: the incident pipeline
//! from the command line. Each command takes `--database-url` (the schema
//! owner), or uses the embedded cluster of `--data-dir`, also while `serve`
//! runs on it, and the cells as `serve` has them (`--cell`): every step runs
//! in the cell that serves the incident's merchant.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use indicatif::{ProgressBar, ProgressStyle};
use uuid::Uuid;

use super::{ReminderPolicy, SettleOptions, Settlement};
use crate::cells::{Cells, MerchantDb};
use crate::db::MerchantId;
use crate::payments::SandboxProvider;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Open an incident: a merchant, a window, the bad and the fixed calculator versions.
    Open(OpenArgs),
    /// Re-price every confirmed order of the window with the fixed version (resumable).
    Scan(ScanArgs),
    /// Counts and sums per class and payment-method status; settle needs it.
    Report(IncidentArgs),
    /// Charge, ask, offer, refund and credit: every step once (resumable, throttled).
    Settle(SettleArgs),
    /// Where the incident stands.
    Status(IncidentArgs),
}

#[derive(Debug, clap::Args)]
pub struct Remediate {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub database: crate::config::CommandDatabaseArgs,
}

#[derive(Debug, clap::Args)]
pub struct OpenArgs {
    /// The merchant: its id or its slug.
    #[arg(long)]
    pub merchant: String,
    /// Start of the window (RFC 3339), inclusive.
    #[arg(long)]
    pub from: DateTime<Utc>,
    /// End of the window (RFC 3339), exclusive; must be in the past.
    #[arg(long)]
    pub to: DateTime<Utc>,
    /// The calculator version that priced wrongly (e.g. v3).
    #[arg(long)]
    pub bad_version: String,
    /// The version that prices right (e.g. v2).
    #[arg(long)]
    pub fixed_version: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct IncidentArgs {
    #[arg(long)]
    pub incident: Uuid,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ScanArgs {
    #[command(flatten)]
    pub incident: IncidentArgs,
    /// Orders per transaction.
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(i64).range(1..=100_000))]
    pub batch: i64,
}

#[derive(Debug, clap::Args)]
pub struct SettleArgs {
    #[command(flatten)]
    pub incident: IncidentArgs,
    /// Payment provider calls per second, at most (a real provider allows about 100).
    #[arg(long, default_value_t = 20.0, value_parser = positive)]
    pub rate: f64,
    /// Reminders after the first request for a new payment method, then escalation.
    #[arg(long, default_value_t = 3)]
    pub reminders: u32,
    /// Seconds before the first reminder; each later wait doubles.
    #[arg(long, default_value = "172800", value_parser = crate::config::seconds)]
    pub reminder_wait: Duration,
    /// Seconds before a retryable provider failure is tried again.
    #[arg(long, default_value = "60", value_parser = crate::config::seconds)]
    pub retry_after: Duration,
    /// SMTP server (smtp://host:port); without it, e-mails are written as .eml files
    /// under <data-dir>/mail.
    #[arg(long, env = "MERCATO_SMTP_URL")]
    pub smtp_url: Option<String>,
    #[arg(
        long,
        env = "MERCATO_MAIL_FROM",
        default_value = "Mercato <no-reply@mercato.local>"
    )]
    pub mail_from: String,
    /// The service's public URL, where the customers' links point.
    #[arg(
        long,
        env = "MERCATO_PUBLIC_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub link_base: String,
    /// Days a customer's link works.
    #[arg(long, default_value_t = 30)]
    pub link_days: u64,
    /// The apology code: percent off a next order...
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub compensation_percent: u32,
    /// ...of at least this much (minor units).
    #[arg(long, default_value_t = 5000)]
    pub compensation_min_subtotal: i64,
    /// Sandbox delay of pm_card_slow, hang of pm_card_timeout (seconds).
    #[arg(long, default_value = "2", value_parser = crate::config::seconds)]
    pub payment_delay: Duration,
}

fn positive(raw: &str) -> Result<f64, String> {
    raw.parse::<f64>()
        .ok()
        .filter(|r| r.is_finite() && *r > 0.0)
        .ok_or_else(|| format!("{raw:?} is not a positive number"))
}

pub async fn run(args: Remediate) -> anyhow::Result<()> {
    use crate::db::Acting;
    let opened = crate::cells::cli::command_cells(&args.database, 4).await?;
    let cells = Cells::of_owners(opened.main.owner.clone(), opened.owners.clone());
    // The sandbox provider keeps its payments in the merchant's cell.
    let provider = |db: &MerchantDb, delay| -> anyhow::Result<Arc<SandboxProvider>> {
        let cell = cells
            .get(db.cell_name())
            .with_context(|| format!("cell {} is not open", db.cell_name()))?;
        Ok(Arc::new(SandboxProvider::new(cell.db.app.clone(), delay)))
    };
    match args.command {
        Command::Open(a) => {
            let merchant = resolve_merchant(&opened.main.owner, &a.merchant).await?;
            let db = cells
                .merchant_db_for_job(merchant)
                .await?
                .acting_for(Acting::command("remediation.open", "remediate open"));
            let id = super::open(&db, a.from, a.to, &a.bad_version, &a.fixed_version).await?;
            if a.json {
                let incident = super::incident(&db, id).await?;
                println!("{}", serde_json::to_string_pretty(&incident)?);
            } else {
                println!("{id}");
            }
        }
        Command::Scan(a) => {
            let id = a.incident.incident;
            let db = super::merchant_of(&cells, id)
                .await?
                .acting_for(Acting::command("remediation.scan", "remediate scan"));
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template(
                    "scan [{bar:30}] {pos}/{len} orders {per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            let provider = provider(&db, Duration::from_secs(2))?;
            let scan = super::scan(&db, id, provider.as_ref(), a.batch, |done, total| {
                bar.set_length(u64::try_from(total).unwrap_or(0));
                bar.set_position(u64::try_from(done).unwrap_or(0));
            });
            let summary = tokio::select! {
                s = scan => s?,
                _ = tokio::signal::ctrl_c() => {
                    bar.abandon();
                    anyhow::bail!("interrupted; run the scan again to resume from its cursor");
                }
            };
            bar.finish_and_clear();
            if a.incident.json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                println!(
                    "scanned {} orders in {:.2} s ({:.0} orders/s); {} in all, {} without recorded pricing",
                    summary.scanned, summary.seconds, summary.orders_per_second,
                    summary.scanned_total, summary.skipped_total
                );
                println!("next: mercato remediate report --incident {id}");
            }
        }
        Command::Report(a) => {
            let db = super::merchant_of(&cells, a.incident).await?;
            let report = super::report(&db, a.incident).await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print_report(&report);
            }
            if !report.sums_reconcile || !report.every_order_scanned {
                anyhow::bail!("the report does not reconcile (see above); settle stays refused");
            }
        }
        Command::Settle(a) => {
            let id = a.incident.incident;
            let db = super::merchant_of(&cells, id)
                .await?
                .acting_for(Acting::command("remediation.settle", "remediate settle"));
            let transport = crate::mail::Transport::from_config(
                a.smtp_url.as_deref(),
                args.database.data_dir.join("mail"),
                &a.mail_from,
            )?;
            let mail_dir = match &transport {
                crate::mail::Transport::Files { dir, .. } => Some(dir.clone()),
                crate::mail::Transport::Smtp { .. } => None,
            };
            let sender = crate::mail::Sender::new(transport);
            let settlement = Settlement {
                provider: provider(&db, a.payment_delay)?,
                db,
                options: SettleOptions {
                    provider_rate: a.rate,
                    reminders: ReminderPolicy {
                        reminders: a.reminders,
                        first_wait: a.reminder_wait,
                    },
                    link_base: a.link_base,
                    link_ttl: Duration::from_secs(a.link_days.saturating_mul(24 * 3600)),
                    compensation_percent: a.compensation_percent,
                    compensation_min_subtotal: a.compensation_min_subtotal,
                    retry_after: a.retry_after,
                },
            };
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("settle {spinner} {pos} steps {per_sec} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            let run = settlement.run(id, &sender, |s| {
                bar.set_position(s.steps);
                bar.set_message(format!(
                    "charged {} · asked {} · offered {} · refunded {} · credited {} · mails {}",
                    s.charged,
                    s.asked_for_payment_method,
                    s.offered_choice,
                    s.refunded,
                    s.credited,
                    s.mails_sent
                ));
            });
            let summary = tokio::select! {
                s = run => s?,
                _ = tokio::signal::ctrl_c() => {
                    bar.abandon();
                    anyhow::bail!("interrupted; every finished step is kept: run settle again to go on");
                }
            };
            bar.finish_and_clear();
            if a.incident.json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                println!(
                    "{} steps: {} charged, {} asked for a payment method, {} reminded, {} escalated, {} offered a choice, {} refunded, {} credited, {} declined; {} to retry; {} e-mails sent",
                    summary.steps, summary.charged, summary.asked_for_payment_method, summary.reminders,
                    summary.escalated, summary.offered_choice, summary.refunded, summary.credited,
                    summary.declined_by_customer, summary.retry_later, summary.mails_sent
                );
                if let Some(dir) = mail_dir {
                    println!("e-mails are in {}", dir.display());
                }
                println!("{} adjustments wait (customers' answers, reminders, retries): run settle again later; see `mercato remediate status --incident {id}`", summary.waiting);
            }
        }
        Command::Status(a) => {
            let db = super::merchant_of(&cells, a.incident).await?;
            let status = super::status(&db, a.incident).await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print_status(&status);
            }
        }
    }
    Ok(())
}

async fn resolve_merchant(pool: &sqlx::PgPool, raw: &str) -> anyhow::Result<MerchantId> {
    if let Ok(id) = Uuid::try_parse(raw) {
        return Ok(MerchantId(id));
    }
    let slug =
        crate::tenancy::Slug::parse(raw).map_err(|e| anyhow::anyhow!("--merchant {raw:?}: {e}"))?;
    crate::tenancy::find_merchant_by_slug(pool, &slug)
        .await
        .context("looking up the merchant")?
        .ok_or_else(|| anyhow::anyhow!("--merchant: no merchant {raw:?}"))
}

fn money(minor: i64) -> String {
    super::messages::amount(minor, "").trim_end().to_owned()
}

fn print_report(r: &super::Report) {
    println!(
        "incident {}  window {} .. {}  bad {} → fixed {}",
        r.incident, r.from, r.to, r.bad_version, r.fixed_version
    );
    println!(
        "orders in window {}, adjustments {}, without pricing {}",
        r.orders_in_window, r.adjustments, r.skipped
    );
    println!(
        "{:<10} {:<11} {:>8} {:>14} {:>14} {:>12}",
        "class", "method", "orders", "charged", "expected", "delta"
    );
    for l in &r.lines {
        println!(
            "{:<10} {:<11} {:>8} {:>14} {:>14} {:>12}",
            l.class.as_str(),
            l.payment_method_status.as_str(),
            l.orders,
            money(l.charged),
            money(l.expected),
            money(l.delta)
        );
    }
    println!(
        "underpaid {} orders, {} to collect · overpaid {} orders, {} to give back · correct {}",
        r.underpaid.orders,
        money(r.underpaid.amount),
        r.overpaid.orders,
        money(r.overpaid.amount),
        r.correct.orders
    );
    println!("largest deltas:");
    for d in &r.largest_deltas {
        println!(
            "  order {} {} charged {} expected {} delta {}",
            d.order_id,
            d.customer_email,
            money(d.charged),
            money(d.expected),
            money(d.delta)
        );
    }
    println!(
        "sums reconcile (charged + delta = expected): {} · every order scanned: {} · settle allowed: {}",
        r.sums_reconcile, r.every_order_scanned, r.settle_allowed
    );
}

fn print_status(s: &super::Status) {
    println!(
        "incident {}  scanned {} (finished: {}, reported: {})",
        s.incident, s.scanned, s.scan_finished, s.reported
    );
    for c in &s.states {
        println!(
            "  {:<24} {:<10} {:>8} adjustments  {:>12}",
            c.state.as_str(),
            c.class.as_str(),
            c.adjustments,
            money(c.amount)
        );
    }
    println!(
        "money moved: charged {} · refunded {} · credited {}",
        money(s.charged),
        money(s.refunded),
        money(s.credited)
    );
    println!(
        "waiting on customers {} · waiting to retry {} · escalated to support {}",
        s.waiting_on_customers, s.waiting_to_retry, s.escalated
    );
    for f in &s.failures {
        println!("  failed: {} ({} adjustments)", f.error, f.adjustments);
    }
    for m in &s.mail {
        println!("  e-mails {}: {}", m.status, m.count);
    }
}
