//! Tenant cells: a merchant moved to a database on another PostgreSQL
//! cluster while it and a neighbour trade, with nothing failed or lost.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mercato::cells::mover::{self, Move, MoveError, Phase, Pools, Quiet};
use mercato::config::CellSpec;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::{Body, Merchant, TestApp, TestDatabase, ADMIN_TOKEN};

/// A second PostgreSQL cluster with an empty database for a cell.
struct OtherCluster {
    url: String,
    _pg: localpg::LocalPg,
    dir: std::path::PathBuf,
}

impl OtherCluster {
    async fn start() -> OtherCluster {
        let dir = std::env::temp_dir().join(format!("mercato-cell-{}", Uuid::now_v7().simple()));
        let pg = localpg::LocalPg::start_ephemeral(&dir).expect("a second cluster starts");
        let admin = PgPool::connect(&pg.url("postgres"))
            .await
            .expect("connects");
        sqlx::query("create database cell_big")
            .execute(&admin)
            .await
            .expect("cell database");
        admin.close().await;
        OtherCluster {
            url: pg.url("cell_big"),
            _pg: pg,
            dir,
        }
    }
}

impl Drop for OtherCluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Setup {
    app: TestApp,
    cell: OtherCluster,
    cell_owner: PgPool,
    pools: Pools,
}

async fn two_cells() -> Setup {
    let cell = OtherCluster::start().await;
    let db = TestDatabase::create().await;
    let mut config = db.config();
    config.cells = vec![CellSpec {
        name: "big".into(),
        url: cell.url.clone(),
    }];
    let app = TestApp::spawn_with(db, config).await;
    let cell_owner = PgPool::connect(&cell.url).await.expect("cell owner");
    // The mover role's pools, as `serve` and `mercato tenants` make them.
    let pools = Pools::of_owners(
        app.owner.connect_options().as_ref(),
        [(
            "big".to_owned(),
            cell_owner.connect_options().as_ref().clone(),
        )],
        4,
    );
    for pool in pools.cells.values() {
        let user: String = sqlx::query_scalar("select current_user::text")
            .fetch_one(pool)
            .await
            .expect("the mover role logs in");
        assert_eq!(
            user,
            mercato::db::MOVER_ROLE,
            "moves never run as the owner"
        );
    }
    Setup {
        app,
        cell,
        cell_owner,
        pools,
    }
}

fn checkout(email: &str) -> Value {
    json!({"customer": {"email": email}, "items": [{"sku": "MUG", "quantity": 1}], "payment_method": "pm_card_ok"})
}

/// Every row of the merchant in each tenant table of `pool`: (table, rows).
async fn rows_of(pool: &PgPool, merchant: &Merchant) -> Vec<(String, i64)> {
    let tables = mover::tenant_tables(pool).await.expect("tables");
    mover::checksums(pool, &tables, merchant.id)
        .await
        .expect("counts")
        .into_iter()
        .map(|(table, rows, _)| (table, rows))
        .collect()
}

/// The ids of the merchant's orders in `pool`.
async fn order_ids(pool: &PgPool, merchant: &Merchant) -> Vec<String> {
    sqlx::query_scalar("select id::text from orders where merchant_id = $1")
        .bind(merchant.id.0)
        .fetch_all(pool)
        .await
        .expect("orders")
}

/// A move's recorded phase.
async fn move_phase(app: &TestApp, id: Uuid) -> String {
    sqlx::query_scalar("select phase from tenant_moves where id = $1")
        .bind(id)
        .fetch_one(&app.owner)
        .await
        .expect("the move is recorded")
}

/// A checkout of one MUG for `email`, which must succeed.
async fn buy(app: &TestApp, merchant: &Merchant, email: &str) {
    let r = app
        .post("/v1/checkouts", &merchant.key, checkout(email))
        .await;
    assert!(r.status.is_success(), "{}", r.body);
}

/// Capture triggers of any move left in the database.
async fn capture_triggers(pool: &PgPool) -> i64 {
    sqlx::query_scalar("select count(*) from pg_trigger where tgname like 'mercato_move_%'")
        .fetch_one(pool)
        .await
        .expect("triggers")
}

fn total(rows: &[(String, i64)]) -> i64 {
    rows.iter().map(|(_, n)| n).sum()
}

/// What a load task saw: answers by status, and the slowest.
#[derive(Default, Debug)]
struct Seen {
    ok: u64,
    failed: Vec<String>,
    slowest: Duration,
    order_ids: Vec<String>,
}

/// Reads and checkouts for `merchant` until `stop`.
fn load(
    app: &TestApp,
    merchant: &Merchant,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Seen> {
    let client = app.client.clone();
    let base = app.base.clone();
    let key = merchant.key.clone();
    tokio::spawn(async move {
        let mut seen = Seen::default();
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            i += 1;
            let started = Instant::now();
            let checkout_now = i.is_multiple_of(3);
            let request = if checkout_now {
                client
                    .post(format!("{base}/v1/checkouts"))
                    .bearer_auth(&key)
                    .header("Idempotency-Key", Uuid::now_v7().to_string())
                    .json(&checkout(&format!("buyer{i}@example.com")))
            } else {
                client.get(format!("{base}/v1/products")).bearer_auth(&key)
            };
            match request.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let body: Value = resp.json().await.unwrap_or(Value::Null);
                    let good = if checkout_now {
                        status == StatusCode::CREATED || status == StatusCode::ACCEPTED
                    } else {
                        status == StatusCode::OK
                    };
                    if good {
                        seen.ok += 1;
                        if checkout_now {
                            seen.order_ids
                                .push(body["id"].as_str().unwrap_or_default().to_owned());
                        }
                    } else {
                        seen.failed.push(format!("{status}: {body}"));
                    }
                }
                Err(err) => seen.failed.push(err.to_string()),
            }
            seen.slowest = seen.slowest.max(started.elapsed());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        seen
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_merchant_moves_to_another_cluster_while_it_and_a_neighbour_trade() {
    let s = two_cells().await;
    let app = &s.app;
    let moving = app.merchant_with_stock("moving", "MUG", 1_000_000).await;
    let neighbour = app.merchant_with_stock("neighbour", "MUG", 1_000_000).await;
    // Side state from before the move: an order under an idempotency key, a
    // reservation with its TTL, a webhook endpoint.
    let before = app
        .post_idempotent(
            "/v1/checkouts",
            &moving.key,
            "before-move",
            Body::Json(checkout("early@example.com")),
        )
        .await;
    assert!(before.status.is_success(), "{}", before.body);
    let reservation = app
        .post(
            "/v1/reservations",
            &moving.key,
            json!({"items": [{"sku": "MUG", "quantity": 2}]}),
        )
        .await;
    assert_eq!(
        reservation.status,
        StatusCode::CREATED,
        "{}",
        reservation.body
    );
    let reservation_id = reservation.body["id"].as_str().expect("id").to_owned();
    let rows_before = rows_of(&app.owner, &moving).await;
    let neighbour_before = rows_of(&app.owner, &neighbour).await;
    assert!(total(&rows_before) > 5, "{rows_before:?}");

    let stop = Arc::new(AtomicBool::new(false));
    let loads = [
        load(app, &moving, stop.clone()),
        load(app, &moving, stop.clone()),
        load(app, &neighbour, stop.clone()),
    ];
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mv = mover::start(&s.pools, moving.id, "big")
        .await
        .expect("the move starts");
    assert_eq!((mv.source.as_str(), mv.target.as_str()), ("main", "big"));
    let mv = mover::drive(&s.pools, mv, true, &Quiet)
        .await
        .expect("the move completes");
    assert_eq!(mv.phase, Phase::Moved);
    // Trading goes on in the new cell for a while.
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::Relaxed);
    let mut seen = Vec::new();
    for l in loads {
        seen.push(l.await.expect("load task"));
    }
    for (who, s) in ["moving #1", "moving #2", "neighbour"].iter().zip(&seen) {
        eprintln!("{who}: {} answered, slowest {:?}", s.ok, s.slowest);
        assert!(s.failed.is_empty(), "{who}: {:?}", s.failed);
        assert!(s.ok > 10, "{who} kept trading: {}", s.ok);
    }

    // The directory and the admin API name the new cell.
    let view = app
        .get(&format!("/v1/merchants/{}", moving.id), ADMIN_TOKEN)
        .await;
    assert_eq!(view.body["cell"], "big", "{}", view.body);
    let pause: f64 = sqlx::query_scalar("select pause_ms from tenant_moves where id = $1")
        .bind(mv.id)
        .fetch_one(&app.owner)
        .await
        .expect("pause recorded");
    eprintln!("write pause {pause:.1} ms");
    // The move record says what the cutover spent its time on.
    let cutover: serde_json::Value =
        sqlx::query_scalar("select cutover from tenant_moves where id = $1")
            .bind(mv.id)
            .fetch_one(&app.owner)
            .await
            .expect("cutover recorded");
    assert!(cutover["keys_rechecked"].as_u64().is_some(), "{cutover}");
    assert!(
        !cutover["rounds"].as_array().expect("rounds").is_empty(),
        "{cutover}"
    );
    assert!(
        cutover["recheck_ms"].as_f64().expect("recheck_ms") <= pause,
        "{cutover}"
    );

    // Every order the load was answered for is in the new cell, once.
    let orders_in_cell = order_ids(&s.cell_owner, &moving).await;
    for id in seen[0].order_ids.iter().chain(&seen[1].order_ids) {
        assert!(orders_in_cell.contains(id), "order {id} is in the new cell");
    }
    // The old copy stayed as it was at the cutover; the new one only grew.
    let rows_in_cell = rows_of(&s.cell_owner, &moving).await;
    assert!(total(&rows_in_cell) >= total(&rows_before));

    // Side state works after the move: the same key replays the same order,
    // the reservation is there with its TTL, the API key still answers.
    let again = app
        .post_idempotent(
            "/v1/checkouts",
            &moving.key,
            "before-move",
            Body::Json(checkout("early@example.com")),
        )
        .await;
    assert_eq!(again.body["id"], before.body["id"], "{}", again.body);
    assert_eq!(
        again
            .headers
            .get("idempotent-replayed")
            .map(|v| v.as_bytes()),
        Some(&b"true"[..])
    );
    let held = app
        .get(&format!("/v1/reservations/{reservation_id}"), &moving.key)
        .await;
    assert_eq!(held.status, StatusCode::OK, "{}", held.body);
    assert_eq!(held.body["expires_at"], reservation.body["expires_at"]);

    // The cell's workers serve the moved merchant: the reservation expires there.
    // The source's copy is deleted; the neighbour's rows are untouched.
    mover::cleanup_source(&s.pools, moving.id, &Quiet)
        .await
        .expect("cleanup");
    assert_eq!(total(&rows_of(&app.owner, &moving).await), 0);
    let neighbour_after = rows_of(&app.owner, &neighbour).await;
    assert!(total(&neighbour_after) > total(&neighbour_before));
    assert_eq!(
        total(&rows_of(&s.cell_owner, &neighbour).await),
        0,
        "the neighbour never left main"
    );
    // No capture trigger or captured key is left behind.
    assert_eq!(capture_triggers(&app.owner).await, 0);
    assert_eq!(app.count("move_changes").await, 0);
    drop(s.cell);
}

/// Each phase run, then the process "dies" (the Move value is dropped) and
/// the move is picked up from its record: it ends as an uninterrupted one.
#[tokio::test]
async fn a_move_resumes_from_its_record_after_each_step() {
    let s = two_cells().await;
    let app = &s.app;
    let m = app.merchant_with_stock("resumed", "MUG", 1000).await;
    for i in 0..5 {
        buy(app, &m, &format!("b{i}@example.com")).await;
    }
    let sums_before = mover::checksums(
        &app.owner,
        &mover::tenant_tables(&app.owner).await.unwrap(),
        m.id,
    )
    .await
    .unwrap();
    let mut mv: Move = mover::start(&s.pools, m.id, "big").await.unwrap();
    while mv.phase != Phase::Moved {
        mover::advance(&s.pools, mv.clone(), &Quiet)
            .await
            .expect("a step");
        // A write between steps is captured and carried over.
        buy(app, &m, "between@example.com").await;
        mv = match mover::running(&s.pools.main, m.id).await.unwrap() {
            Some(resumed) => resumed,
            None => Move {
                phase: Phase::Moved,
                ..mv
            },
        };
    }
    let tables = mover::tenant_tables(&s.cell_owner).await.unwrap();
    let in_cell = mover::checksums(&s.cell_owner, &tables, m.id)
        .await
        .unwrap();
    let orders = in_cell
        .iter()
        .find(|(t, _, _)| t == "orders")
        .expect("orders");
    let orders_before = sums_before.iter().find(|(t, _, _)| t == "orders").unwrap();
    assert!(
        orders.1 > orders_before.1,
        "the writes between steps arrived: {orders:?}"
    );
    let r = app.get("/v1/products", &m.key).await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn an_aborted_move_leaves_the_source_the_only_copy() {
    let s = two_cells().await;
    let app = &s.app;
    let m = app.merchant_with_stock("stays", "MUG", 1000).await;
    buy(app, &m, "a@example.com").await;
    let tables = mover::tenant_tables(&app.owner).await.unwrap();
    let mv = mover::start(&s.pools, m.id, "big").await.unwrap();
    let mv = mover::advance(&s.pools, mv, &Quiet).await.unwrap();
    assert_eq!(mv.phase, Phase::CatchingUp);
    assert!(total(&rows_of(&s.cell_owner, &m).await) > 0, "copied");
    let sums = mover::checksums(&app.owner, &tables, m.id).await.unwrap();
    mover::abort(&s.pools, m.id, &Quiet).await.expect("aborts");
    assert_eq!(
        total(&rows_of(&s.cell_owner, &m).await),
        0,
        "nothing left in the target"
    );
    assert_eq!(
        mover::checksums(&app.owner, &tables, m.id).await.unwrap(),
        sums,
        "the source unchanged"
    );
    assert_eq!(capture_triggers(&app.owner).await, 0);
    assert_eq!(
        capture_triggers(&s.cell_owner).await,
        0,
        "nor a reverse stream"
    );
    let view = app
        .get(&format!("/v1/merchants/{}", m.id), ADMIN_TOKEN)
        .await;
    assert_eq!(view.body["cell"], "main");
    assert!(view.body.get("moving").is_none(), "{}", view.body);
    let r = app
        .post("/v1/checkouts", &m.key, checkout("after@example.com"))
        .await;
    assert!(r.status.is_success(), "it trades on in main: {}", r.body);
    assert!(matches!(
        mover::abort(&s.pools, m.id, &Quiet).await,
        Err(MoveError::NotMoving(_))
    ));
}

#[tokio::test]
async fn moves_that_cannot_work_are_refused_and_change_nothing() {
    let s = two_cells().await;
    let app = &s.app;
    let m = app.merchant_with_stock("refused", "MUG", 10).await;
    assert!(matches!(
        mover::start(&s.pools, m.id, "nowhere").await,
        Err(MoveError::UnknownCell(..))
    ));
    assert!(matches!(
        mover::start(&s.pools, m.id, "main").await,
        Err(MoveError::AlreadyThere { .. })
    ));
    // A cell whose schema is behind (never migrated).
    let admin = PgPool::connect(&s.cell.url.replace("/cell_big", "/postgres"))
        .await
        .unwrap();
    sqlx::query("create database cell_empty")
        .execute(&admin)
        .await
        .unwrap();
    let empty = PgPool::connect(&s.cell.url.replace("/cell_big", "/cell_empty"))
        .await
        .unwrap();
    sqlx::query("create table _sqlx_migrations (version bigint, success boolean)")
        .execute(&empty)
        .await
        .unwrap();
    let mut pools = Pools::new(s.pools.main.clone(), s.pools.cells.clone());
    pools.cells.insert("empty".into(), empty);
    assert!(matches!(
        mover::start(&pools, m.id, "empty").await,
        Err(MoveError::SchemaBehind { .. })
    ));
    assert_eq!(app.count("tenant_moves").await, 0, "nothing recorded");
    // One move at a time per merchant.
    mover::start(&s.pools, m.id, "big").await.unwrap();
    assert!(matches!(
        mover::start(&s.pools, m.id, "big").await,
        Err(MoveError::AlreadyMoving(_))
    ));
}

/// `mercato tenants move`, killed (SIGKILL) at moments that fall in each
/// phase, resumed each time: it ends as an uninterrupted move does, with the
/// target equal to the source and nothing of the capture left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_killed_at_any_moment_resumes_to_the_same_end() {
    let s = two_cells().await;
    let app = &s.app;
    let m = app.merchant_with_stock("killed", "MUG", 100_000).await;
    for i in 0..30 {
        buy(app, &m, &format!("k{i}@example.com")).await;
    }
    let run = |args: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_mercato"));
        cmd.args(args)
            .arg("--keep-source")
            .arg("--database-url")
            .arg(&app.db.owner_url)
            .arg("--cell")
            .arg(format!("big={}", s.cell.url))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        cmd
    };
    let mut phases_killed = Vec::new();
    for delay in [150u64, 600, 1200, 1900, 2500, 2900, 3300] {
        let running = mover::running(&app.owner, m.id).await.unwrap();
        if running.is_none() && mover::cell_of(&app.owner, m.id).await.unwrap() == "big" {
            break;
        }
        let mut child = match running {
            Some(_) => run(&["tenants", "resume", "killed"]),
            None => run(&["tenants", "move", "killed", "--to", "big"]),
        }
        .spawn()
        .expect("the binary runs");
        tokio::time::sleep(Duration::from_millis(delay)).await;
        let _ = child.kill();
        let _ = child.wait();
        let Some(mv) = mover::running(&app.owner, m.id).await.unwrap() else {
            continue;
        };
        phases_killed.push(mv.phase);
        if matches!(mv.phase, Phase::Copying | Phase::CatchingUp) {
            // Writes between the kills are captured and carried over.
            buy(app, &m, "between@example.com").await;
        }
    }
    eprintln!("killed in phases {phases_killed:?}");
    // A kill may have fallen just after the cutover: a resume ends that too.
    let status = run(&["tenants", "resume", "killed"]).status().unwrap();
    assert!(status.success(), "the last resume finishes");
    assert_eq!(mover::cell_of(&app.owner, m.id).await.unwrap(), "big");
    let tables = mover::tenant_tables(&app.owner).await.unwrap();
    let source = mover::checksums(&app.owner, &tables, m.id).await.unwrap();
    let target = mover::checksums(&s.cell_owner, &tables, m.id)
        .await
        .unwrap();
    assert_eq!(source, target, "the target holds exactly the source's rows");
    assert_eq!(capture_triggers(&app.owner).await, 0);
    let r = app.get("/v1/products", &m.key).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}

/// The foundation's schema rules hold in every cell, not only the main
/// database: `serve` migrates each the same way.
#[tokio::test]
async fn every_cell_forces_rls_on_its_tenant_tables() {
    let s = two_cells().await;
    let tables = mover::tenant_tables(&s.cell_owner).await.unwrap();
    assert!(
        tables.len() > 20,
        "the cell has the whole schema: {}",
        tables.len()
    );
    for t in &tables {
        let (rls, forced): (bool, bool) = sqlx::query_as(
            "select relrowsecurity, relforcerowsecurity from pg_class
             where relname = $1 and relnamespace = 'public'::regnamespace",
        )
        .bind(&t.name)
        .fetch_one(&s.cell_owner)
        .await
        .unwrap();
        assert!(rls && forced, "{} forces RLS in the cell", t.name);
        assert_eq!(
            t.key[0], "merchant_id",
            "{} leads its key with merchant_id",
            t.name
        );
    }
    // The service's role in the cell is bound by it, like in main.
    let superuser: bool =
        sqlx::query_scalar("select rolsuper from pg_roles where rolname = 'mercato_app'")
            .fetch_one(&s.cell_owner)
            .await
            .unwrap();
    assert!(!superuser);
}

/// A target that differs from the source (here: a row changed behind the
/// mover's back) stops the cutover: nothing flips, the merchant trades on in
/// its old cell, and the move stays resumable.
#[tokio::test]
async fn a_target_that_differs_is_caught_before_the_flip() {
    let s = two_cells().await;
    let app = &s.app;
    let m = app.merchant_with_stock("corrupted", "MUG", 1000).await;
    buy(app, &m, "c@example.com").await;
    let mv = mover::start(&s.pools, m.id, "big").await.unwrap();
    let mv = mover::advance(&s.pools, mv, &Quiet).await.unwrap();
    sqlx::query(
        "update orders set customer_email = 'someone-else@example.com' where merchant_id = $1",
    )
    .bind(m.id.0)
    .execute(&s.cell_owner)
    .await
    .unwrap();
    let outcome = mover::drive(&s.pools, mv, true, &Quiet).await;
    assert!(
        matches!(&outcome, Err(MoveError::Mismatch { table, .. }) if table == "orders"),
        "{outcome:?}"
    );
    assert_eq!(mover::cell_of(&app.owner, m.id).await.unwrap(), "main");
    let r = app
        .post("/v1/checkouts", &m.key, checkout("still@example.com"))
        .await;
    assert!(r.status.is_success(), "it trades on in main: {}", r.body);
    assert!(mover::running(&app.owner, m.id).await.unwrap().is_some());
}

/// A move that kept its source is undone with every write made since its
/// cutover (the reverse stream), while the merchant trades; a rollback
/// abandoned half-way leaves the move as it was, and can be taken up again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_move_that_kept_its_source_rolls_back_with_the_writes_made_since() {
    let s = two_cells().await;
    let app = &s.app;
    let m = app.merchant_with_stock("returns", "MUG", 1_000_000).await;
    buy(app, &m, "first@example.com").await;
    let stop = Arc::new(AtomicBool::new(false));
    let trading = load(app, &m, stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mv = mover::start(&s.pools, m.id, "big").await.unwrap();
    let mv = mover::drive(&s.pools, mv, true, &Quiet).await.unwrap();
    assert_eq!(mv.phase, Phase::Moved);
    tokio::time::sleep(Duration::from_millis(400)).await;
    // The source's capture ended at the cutover; the target's goes on.
    assert_eq!(capture_triggers(&app.owner).await, 0);
    assert!(
        capture_triggers(&s.cell_owner).await > 0,
        "the reverse stream"
    );

    // Started, then abandoned: the merchant stays in the cell, its move stands.
    let back = mover::rollback(&s.pools, m.id)
        .await
        .expect("a rollback starts");
    assert_eq!(
        (back.source.as_str(), back.target.as_str()),
        ("big", "main")
    );
    assert_eq!(back.phase, Phase::CatchingUp);
    assert_eq!(back.rollback_of, Some(mv.id));
    let back = mover::advance(&s.pools, back, &Quiet).await.unwrap();
    assert_eq!(back.phase, Phase::CuttingOver);
    mover::abort(&s.pools, m.id, &Quiet)
        .await
        .expect("the rollback aborts");
    assert_eq!(move_phase(app, mv.id).await, "moved");
    assert_eq!(mover::cell_of(&s.pools.main, m.id).await.unwrap(), "big");
    assert_eq!(capture_triggers(&app.owner).await, 0);
    assert!(
        capture_triggers(&s.cell_owner).await > 0,
        "the reverse stream goes on"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Taken up again and carried through, while the merchant trades.
    let back = mover::rollback(&s.pools, m.id).await.expect("again");
    let back = mover::drive(&s.pools, back, false, &Quiet)
        .await
        .expect("the rollback completes");
    assert_eq!(back.phase, Phase::Cleaned);
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let seen = trading.await.unwrap();
    assert!(seen.failed.is_empty(), "{:?}", seen.failed);
    assert!(seen.ok > 20, "it traded throughout: {}", seen.ok);

    // Back in main with every order it was answered for, before, during and
    // after the move; nothing left in the cell.
    let view = app
        .get(&format!("/v1/merchants/{}", m.id), ADMIN_TOKEN)
        .await;
    assert_eq!(view.body["cell"], "main", "{}", view.body);
    let orders = order_ids(&app.owner, &m).await;
    for id in &seen.order_ids {
        assert!(orders.contains(id), "order {id} is back in main");
    }
    assert_eq!(total(&rows_of(&s.cell_owner, &m).await), 0);
    assert_eq!(capture_triggers(&app.owner).await, 0);
    assert_eq!(capture_triggers(&s.cell_owner).await, 0);
    assert_eq!(app.count("move_changes").await, 0);
    assert_eq!(move_phase(app, mv.id).await, "rolled_back");
    // A rollback cleaned up cannot be rolled back in turn.
    assert!(matches!(
        mover::rollback(&s.pools, m.id).await,
        Err(MoveError::NothingToRollBack(_))
    ));
    let r = app
        .post("/v1/checkouts", &m.key, checkout("home@example.com"))
        .await;
    assert!(r.status.is_success(), "{}", r.body);
    drop(s.cell);
}

/// A move started from the admin API: `serve` drives it to the end while the
/// merchant trades, and the record it answers can be watched; what cannot
/// work is refused with the field or the conflict named.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_move_started_from_the_admin_api_is_driven_by_serve_and_watched() {
    let s = two_cells().await;
    let app = &s.app;
    let m = app.merchant_with_stock("api-moved", "MUG", 1_000_000).await;
    buy(app, &m, "first@example.com").await;
    let path = format!("/v1/merchants/{}/moves", m.id);

    // Refused, with nothing recorded.
    let unknown = app.post(&path, ADMIN_TOKEN, json!({"to": "nowhere"})).await;
    assert_eq!(
        unknown.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        unknown.body
    );
    assert_eq!(unknown.body["errors"][0]["field"], "to", "{}", unknown.body);
    let here = app.post(&path, ADMIN_TOKEN, json!({"to": "main"})).await;
    assert_eq!(
        here.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        here.body
    );
    let nobody = app
        .post(
            &format!("/v1/merchants/{}/moves", Uuid::now_v7()),
            ADMIN_TOKEN,
            json!({"to": "big"}),
        )
        .await;
    assert_eq!(nobody.status, StatusCode::NOT_FOUND);
    let merchant_key = app.post(&path, &m.key, json!({"to": "big"})).await;
    assert_eq!(merchant_key.status, StatusCode::FORBIDDEN);
    assert_eq!(app.count("tenant_moves").await, 0);

    let stop = Arc::new(AtomicBool::new(false));
    let trading = load(app, &m, stop.clone());
    let started = app.post(&path, ADMIN_TOKEN, json!({"to": "big"})).await;
    assert_eq!(started.status, StatusCode::ACCEPTED, "{}", started.body);
    assert_eq!(started.body["driven_by"], "api");
    let location = started.headers["location"].to_str().unwrap().to_owned();
    let again = app.post(&path, ADMIN_TOKEN, json!({"to": "big"})).await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.body);
    assert_eq!(
        again.body["type"]
            .as_str()
            .map(|t| t.ends_with("move-running")),
        Some(true),
        "{}",
        again.body
    );

    // Watched until the end.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen_phases = Vec::new();
    let last = loop {
        let r = app.get(&location, ADMIN_TOKEN).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        let phase = r.body["phase"].as_str().unwrap_or_default().to_owned();
        if seen_phases.last() != Some(&phase) {
            seen_phases.push(phase.clone());
        }
        if phase == "cleaned" {
            break r.body;
        }
        assert!(
            Instant::now() < deadline,
            "the move did not finish: {}",
            r.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    stop.store(true, Ordering::Relaxed);
    let seen = trading.await.unwrap();
    assert!(seen.failed.is_empty(), "{:?}", seen.failed);
    eprintln!("phases seen: {seen_phases:?}; {last}");
    assert!(last["pause_ms"].as_f64().is_some(), "{last}");
    assert!(last["rows_copied"].as_i64().unwrap_or(0) > 0, "{last}");
    assert_eq!(last["last_error"], Value::Null);
    let view = app
        .get(&format!("/v1/merchants/{}", m.id), ADMIN_TOKEN)
        .await;
    assert_eq!(view.body["cell"], "big", "{}", view.body);
    // Who moved it where is in its trail, which moved with it.
    let trail = app.get("/v1/audit-log?action=merchant.move", &m.key).await;
    assert_eq!(trail.status, StatusCode::OK, "{}", trail.body);
    assert_eq!(
        trail.body["data"][0]["actor_kind"], "admin",
        "{}",
        trail.body
    );
    assert_eq!(
        trail.body["data"][0]["changes"]["to"], "big",
        "{}",
        trail.body
    );
    assert_eq!(
        total(&rows_of(&app.owner, &m).await),
        0,
        "the old copy is gone"
    );
    let orders = order_ids(&s.cell_owner, &m).await;
    for id in &seen.order_ids {
        assert!(orders.contains(id), "order {id} is in the new cell");
    }
    // Another merchant's move is not found under this one.
    let other = app.merchant_with_stock("bystander", "MUG", 10).await;
    let wrong = app
        .get(
            &location.replace(&m.id.to_string(), &other.id.to_string()),
            ADMIN_TOKEN,
        )
        .await;
    assert_eq!(wrong.status, StatusCode::NOT_FOUND);
    drop(s.cell);
}

/// Embedded mode: `mercato cells add` makes a private cluster beside the
/// main one, `serve` without a database URL starts and serves it, and the
/// demo merchant moves there from the admin API and goes on answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_cell_made_by_cells_add_is_served_and_moved_to() {
    let dir = std::env::temp_dir().join(format!("mercato-embedded-{}", Uuid::now_v7().simple()));
    let add = |name: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_mercato"))
            .args(["cells", "add", name, "--data-dir"])
            .arg(&dir)
            .env_remove("DATABASE_URL")
            .output()
            .expect("mercato runs")
    };
    let out = add("big");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again = add("big");
    assert!(!again.status.success(), "a cell is added once");
    assert_eq!(
        String::from_utf8_lossy(&again.stderr)
            .trim()
            .lines()
            .count(),
        1
    );

    let mut config = mercato::Config::new("127.0.0.1:0".parse().unwrap());
    config.database.database_url = None;
    config.data_dir = dir.clone();
    config.admin_token = Some(ADMIN_TOKEN.into());
    let app = mercato::App::build(config).await.expect("serve starts");
    let base = format!("http://{}", app.addr);
    let key = app.demo_api_key.clone().expect("the demo is seeded");
    let demo = mercato::tenancy::ApiKey::parse(&key)
        .expect("a key")
        .merchant_id;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(app.serve(async {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::new();
    let started = client
        .post(format!("{base}/v1/merchants/{demo}/moves"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"to": "big"}))
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), StatusCode::ACCEPTED);
    let location = started.headers()["location"].to_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r: Value = client
            .get(format!("{base}{location}"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if r["phase"] == "cleaned" {
            break;
        }
        assert!(Instant::now() < deadline, "{r}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let view: Value = client
        .get(format!("{base}/v1/merchants/{demo}"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(view["cell"], "big", "{view}");
    let products = client
        .get(format!("{base}/v1/products"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(products.status(), StatusCode::OK);
    let products: Value = products.json().await.unwrap();
    assert!(
        !products["data"].as_array().unwrap().is_empty(),
        "the demo's catalog came along"
    );
    let _ = stop.send(());
    let _ = served.await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// `mercato cells add` in a data directory only its owner may enter, made
/// under umask 077 as `mktemp -d` makes them: as root (the server then runs
/// as `postgres`, which must pass that directory) and, when we are root, as
/// a user who is not (`nobody`, with a copy of the binary it may run).
#[test]
fn cells_add_works_in_a_data_directory_only_its_owner_may_enter() {
    let is_root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let add_in_a_private_directory = |bin: &std::path::Path, user: Option<&str>| {
        let script = r#"umask 077 && d="$(mktemp -d)" || exit 9
            "$0" cells add big --data-dir "$d" && "$0" cells list --data-dir "$d"
            rc=$?; rm -rf "$d"; exit $rc"#;
        let mut cmd = match user {
            Some(user) => {
                let mut cmd = std::process::Command::new("runuser");
                cmd.args(["-u", user, "--", "sh", "-c", script]);
                cmd
            }
            None => {
                let mut cmd = std::process::Command::new("sh");
                cmd.args(["-c", script]);
                cmd
            }
        };
        let out = cmd
            .arg(bin)
            .env_remove("DATABASE_URL")
            .env_remove("MERCATO_DATA_DIR")
            .output()
            .expect("sh runs");
        assert!(
            out.status.success(),
            "as {}: {}",
            user.unwrap_or("ourselves"),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("big\t"),
            "the cell is listed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    };
    add_in_a_private_directory(std::path::Path::new(env!("CARGO_BIN_EXE_mercato")), None);
    if is_root {
        let dir = std::env::temp_dir().join(format!("mercato-bin-{}", Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let bin = dir.join("mercato");
        std::fs::copy(env!("CARGO_BIN_EXE_mercato"), &bin).expect("copy the binary");
        add_in_a_private_directory(&bin, Some("nobody"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Writes a new product and its stock through the API once the copy has
/// passed `variants` but not yet `stock`: the copy meets a stock row whose
/// variant it did not copy.
struct WritesBetweenTables {
    base: String,
    key: String,
    after_rows: u64,
    copied: std::sync::atomic::AtomicU64,
    written: AtomicBool,
}

impl mover::Progress for WritesBetweenTables {
    fn copied(&self, rows: u64) {
        let so_far = self.copied.fetch_add(rows, Ordering::SeqCst) + rows;
        if so_far < self.after_rows || self.written.swap(true, Ordering::SeqCst) {
            return;
        }
        let (base, key) = (self.base.clone(), self.key.clone());
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(async move {
                let client = reqwest::Client::new();
                let made = client
                    .post(format!("{base}/v1/products"))
                    .bearer_auth(&key)
                    .json(&json!({"name": "Late", "variants": [{"sku": "LATE", "price": {"amount": 500, "currency": "EUR"}}]}))
                    .send()
                    .await
                    .unwrap();
                assert!(made.status().is_success());
                let stocked = client
                    .put(format!("{base}/v1/inventory/LATE"))
                    .bearer_auth(&key)
                    .json(&json!({"on_hand": 7}))
                    .send()
                    .await
                    .unwrap();
                assert!(stocked.status().is_success());
            })
        });
    }
}

/// The copy reads in short transactions, not one snapshot: a row whose
/// parent was written after the parent's table was copied is left to the
/// replay, and the move ends with both, equal on both sides.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_row_whose_parent_came_after_its_table_was_copied_arrives_with_the_replay() {
    let s = two_cells().await;
    let app = &s.app;
    let m = app.merchant_with_stock("late-parent", "MUG", 1000).await;
    buy(app, &m, "a@example.com").await;
    let tables = mover::tenant_tables(&app.owner).await.unwrap();
    let sums = mover::checksums(&app.owner, &tables, m.id).await.unwrap();
    let position = |name: &str| tables.iter().position(|t| t.name == name).unwrap();
    assert!(
        position("variants") < position("stock"),
        "parents are copied first"
    );
    let after_rows: i64 = sums[..=position("variants")]
        .iter()
        .map(|(_, n, _)| n)
        .sum();
    let progress = WritesBetweenTables {
        base: app.base.clone(),
        key: m.key.clone(),
        after_rows: after_rows as u64,
        copied: Default::default(),
        written: AtomicBool::new(false),
    };
    let mv = mover::start(&s.pools, m.id, "big").await.unwrap();
    let mv = mover::advance(&s.pools, mv, &progress)
        .await
        .expect("the copy goes on");
    assert!(
        progress.written.load(Ordering::SeqCst),
        "the write happened mid-copy"
    );
    let late: i64 =
        sqlx::query_scalar("select count(*) from stock where merchant_id = $1 and sku = 'LATE'")
            .bind(m.id.0)
            .fetch_one(&s.cell_owner)
            .await
            .unwrap();
    assert_eq!(late, 0, "the orphan was left to the replay");
    let mv = mover::drive(&s.pools, mv, true, &Quiet)
        .await
        .expect("the move completes");
    assert_eq!(mv.phase, Phase::Moved);
    assert_eq!(
        mover::checksums(&s.cell_owner, &tables, m.id)
            .await
            .unwrap(),
        mover::checksums(&app.owner, &tables, m.id).await.unwrap(),
        "equal on both sides"
    );
    let stock = app.get("/v1/inventory/LATE", &m.key).await;
    assert_eq!(stock.status, StatusCode::OK, "{}", stock.body);
    assert_eq!(stock.body["on_hand"], 7, "{}", stock.body);
    drop(s.cell);
}

/// The gate is up only for a cutover. A process that missed the notice of
/// one (its cached placement says "not moving") sends a request to the
/// source as the cutover fences it: the request waits at the gate, then goes
/// where the directory says, and does not fail.
#[tokio::test]
async fn a_request_from_a_process_that_missed_the_cutover_waits_at_the_gate() {
    let app = TestApp::spawn().await;
    let m = app.merchant_with_stock("late", "MUG", 1000).await;
    // Placed and cached as not moving.
    buy(&app, &m, "first@example.com").await;
    // The cutover's steps, with no NOTIFY: directory `moving`, gate closed,
    // source fenced.
    sqlx::query(
        "insert into tenant_directory (merchant_id, cell, moving) values ($1, 'main', true)",
    )
    .bind(m.id.0)
    .execute(&app.owner)
    .await
    .unwrap();
    let mut mover_conn = app.owner.acquire().await.unwrap();
    sqlx::query("select pg_advisory_lock(19779, hashtext($1::text))") // GATE_CLASS, "MC"
        .bind(m.id.0)
        .execute(&mut *mover_conn)
        .await
        .unwrap();
    sqlx::query("insert into cell_absent (merchant_id, why) values ($1, 'departed')")
        .bind(m.id.0)
        .execute(&app.owner)
        .await
        .unwrap();
    let request = tokio::spawn(
        app.client
            .post(format!("{}/v1/checkouts", app.base))
            .bearer_auth(&m.key)
            .header("Idempotency-Key", Uuid::now_v7().to_string())
            .json(&checkout("late@example.com"))
            .send(),
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!request.is_finished(), "the request waits at the gate");
    // The cutover gives up (or flips): the source serves again, the gate opens.
    sqlx::query("delete from cell_absent where merchant_id = $1")
        .bind(m.id.0)
        .execute(&app.owner)
        .await
        .unwrap();
    sqlx::query("update tenant_directory set moving = false where merchant_id = $1")
        .bind(m.id.0)
        .execute(&app.owner)
        .await
        .unwrap();
    sqlx::query("select pg_advisory_unlock(19779, hashtext($1::text))")
        .bind(m.id.0)
        .execute(&mut *mover_conn)
        .await
        .unwrap();
    let response = request.await.unwrap().unwrap();
    let status = response.status();
    assert!(
        status.is_success(),
        "{status}: {}",
        response.text().await.unwrap_or_default()
    );
    let orders: i64 = sqlx::query_scalar("select count(*) from orders where merchant_id = $1")
        .bind(m.id.0)
        .fetch_one(&app.owner)
        .await
        .unwrap();
    assert_eq!(orders, 2);
}

/// A transaction refused by the cell's fence leaves its connection clean:
/// the next transaction on it, of another merchant, works.
#[tokio::test]
async fn a_transaction_refused_by_the_fence_does_not_spoil_its_connection() {
    let app = TestApp::spawn().await;
    let gone = app.create_merchant("gone").await;
    let here = app.create_merchant("here").await;
    sqlx::query("insert into cell_absent (merchant_id, why) values ($1, 'departed')")
        .bind(gone.id.0)
        .execute(&app.owner)
        .await
        .unwrap();
    let one = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with(app.owner.connect_options().as_ref().clone())
        .await
        .unwrap();
    let refused = mercato::db::TenantTx::begin(&one, gone.id).await;
    assert!(
        matches!(&refused, Err(e) if mercato::db::served_elsewhere(e)),
        "{:?}",
        refused.err()
    );
    drop(refused);
    let mut tx = mercato::db::TenantTx::begin(&one, here.id).await.unwrap();
    let n: i64 = sqlx::query_scalar("select count(*) from orders")
        .fetch_one(tx.conn())
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(n, 0);
}

/// The replay reads each captured key's row as the source holds it now, in
/// batches of 5,000 captured writes. An order written before a batch's end
/// but pointed, later, at a payment written after it cannot be placed with
/// that batch, nor can its items: they are kept and arrive with the next
/// batch, not lost.
#[tokio::test]
async fn rows_whose_parent_was_written_beyond_a_replay_batch_arrive_with_the_next() {
    let s = two_cells().await;
    let app = &s.app;
    let m = app.merchant_with_stock("late-parent", "MUG", 1000).await;
    buy(app, &m, "before@example.com").await;
    let mv = mover::start(&s.pools, m.id, "big").await.unwrap();
    let mv = mover::advance(&s.pools, mv, &Quiet).await.unwrap();
    assert_eq!(mv.phase, Phase::CatchingUp);
    sqlx::query(&format!(
        "do $$
         declare
             m uuid := '{}';
             r uuid := gen_random_uuid();
             o uuid := gen_random_uuid();
             p uuid := gen_random_uuid();
         begin
             insert into reservations (merchant_id, id, expires_at) values (m, r, now() + interval '1 hour');
             insert into orders (merchant_id, id, status, saga_step, customer_email, payment_method,
                                 reservation_id, total_amount, currency)
             values (m, o, 'pending', 'reserved', 'late@example.com', 'pm_card_ok', r, 1000, 'EUR');
             insert into order_items (merchant_id, order_id, sku, quantity, unit_amount)
             values (m, o, 'MUG', 1, 1000);
             -- More captured writes than one replay batch holds.
             for i in 1..5100 loop
                 update stock set updated_at = now() where merchant_id = m and sku = 'MUG';
             end loop;
             insert into payments (merchant_id, id, idempotency_key, payment_method, amount, currency, status)
             values (m, p, 'late-' || o, 'pm_card_ok', 1000, 'EUR', 'authorized');
             update orders set payment_id = p, saga_step = 'authorized' where merchant_id = m and id = o;
         end $$",
        m.id.0
    ))
    .execute(&app.owner)
    .await
    .unwrap();
    let mv = mover::drive(&s.pools, mv, true, &Quiet).await.unwrap();
    assert_eq!(mv.phase, Phase::Moved);
    let tables = mover::tenant_tables(&app.owner).await.unwrap();
    let source = mover::checksums(&app.owner, &tables, m.id).await.unwrap();
    let target = mover::checksums(&s.cell_owner, &tables, m.id)
        .await
        .unwrap();
    assert_eq!(source, target);
    assert_eq!(order_ids(&s.cell_owner, &m).await.len(), 2);
}

/// Moves a merchant to the cell `big` with the mover, step by step.
async fn move_to_big(s: &Setup, merchant: mercato::tenancy::MerchantId) {
    let mut mv: Move = mover::start(&s.pools, merchant, "big").await.unwrap();
    while mv.phase != Phase::Moved {
        mover::advance(&s.pools, mv.clone(), &Quiet)
            .await
            .expect("a step");
        mv = match mover::running(&s.pools.main, merchant).await.unwrap() {
            Some(next) => next,
            None => break,
        };
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merchant_moved_to_another_cell_runs_remediation_and_legacy_orders_there() {
    use mercato::cells::Cells;
    use mercato::payments::SandboxProvider;
    use mercato::remediation::{self, Choice, LinkPurpose, Settlement};
    use mercato::tenancy::MerchantId;

    let s = two_cells().await;
    let app = &s.app;
    // An incident's worth of orders, seeded in main, then the merchant moves.
    let facts = mercato::demo::incident::seed(
        &app.owner,
        &mercato::demo::incident::Options {
            orders: 400,
            weeks: 3,
            seed: 5,
            json: false,
            database: Default::default(),
            data_dir: "unused".into(),
        },
        false,
    )
    .await
    .expect("the incident seeds");
    let merchant = MerchantId(facts.merchant_id);
    move_to_big(&s, merchant).await;

    // As the commands resolve it: the directory names cell big.
    let cells = Cells::of_owners(
        app.owner.clone(),
        [("big".to_owned(), s.cell_owner.clone())],
    );
    let db = cells.merchant_db_for_job(merchant).await.expect("routed");
    assert_eq!(db.cell_name(), "big");
    let provider = Arc::new(SandboxProvider::new(
        s.cell_owner.clone(),
        Duration::from_millis(20),
    ));
    let id = remediation::open(&db, facts.from, facts.to, "v3", "v2")
        .await
        .expect("opens in the merchant's cell");
    let scan = remediation::scan(&db, id, provider.as_ref(), 97, |_, _| {})
        .await
        .expect("scans");
    assert_eq!(scan.scanned, facts.orders_in_window);
    // The same findings as the seeded facts (what the tests in main check).
    let report = remediation::report(&db, id).await.expect("reports");
    assert_eq!(report.underpaid.orders, facts.underpaid);
    assert_eq!(report.underpaid.amount, facts.underpaid_sum);
    assert_eq!(report.overpaid.orders, facts.overpaid);
    assert_eq!(report.overpaid.amount, facts.overpaid_sum);
    assert!(report.sums_reconcile && report.every_order_scanned && report.settle_allowed);

    let mail_dir = std::env::temp_dir().join(format!("mercato-mail-{}", Uuid::now_v7().simple()));
    let sender = mercato::mail::Sender::new(
        mercato::mail::Transport::from_config(None, mail_dir.clone(), "shop@example.com")
            .expect("a file transport"),
    );
    let settled = Settlement {
        db: db.clone(),
        provider: provider.clone(),
        options: remediation::SettleOptions {
            provider_rate: 10_000.0,
            ..Default::default()
        },
    }
    .run(id, &sender, |_| {})
    .await
    .expect("settles in the merchant's cell");
    assert_eq!(settled.offered_choice as i64, facts.overpaid);
    assert_eq!(
        (settled.charged + settled.asked_for_payment_method) as i64,
        facts.underpaid
    );
    // Everything was written in big; main holds nothing of it.
    let in_big: i64 =
        sqlx::query_scalar("select count(*) from order_adjustments where merchant_id = $1")
            .bind(merchant.0)
            .fetch_one(&s.cell_owner)
            .await
            .unwrap();
    assert_eq!(in_big, facts.orders_in_window);
    let in_main: i64 = sqlx::query_scalar(
        "select (select count(*) from remediation_incidents where merchant_id = $1)
              + (select count(*) from payments where merchant_id = $1 and idempotency_key like 'adj%')",
    )
    .bind(merchant.0)
    .fetch_one(&app.owner)
    .await
    .unwrap();
    assert_eq!(in_main, 0, "nothing of the incident in main");

    // A customer's link, through the service: it finds the merchant in big.
    let waiting: Uuid = sqlx::query_scalar(
        "select id from order_adjustments where merchant_id = $1 and state = 'awaiting_choice' limit 1",
    )
    .bind(merchant.0)
    .fetch_one(&s.cell_owner)
    .await
    .expect("an overpaid customer waits for a choice");
    let token = crate::remediation::link_token(
        &s.cell_owner,
        waiting,
        LinkPurpose::Choice,
        chrono::Utc::now().timestamp() + 3600,
    )
    .await;
    let chosen = app
        .request(
            reqwest::Method::POST,
            &format!("/v1/adjustments/{waiting}/choice"),
            None,
            Some(json!({"token": token, "choice": Choice::Credit.as_str()})),
        )
        .await;
    assert_eq!(chosen.status, 200, "{}", chosen.body);
    assert_eq!(chosen.body["choice"], "credit", "{}", chosen.body);
    let state: String = sqlx::query_scalar("select state from order_adjustments where id = $1")
        .bind(waiting)
        .fetch_one(&s.cell_owner)
        .await
        .unwrap();
    assert_ne!(state, "awaiting_choice");

    // The command line finds the incident in big too (`--cell`, as serve has it).
    let status = tokio::process::Command::new(env!("CARGO_BIN_EXE_mercato"))
        .args([
            "remediate",
            "status",
            "--incident",
            &id.to_string(),
            "--json",
            "--database-url",
            &app.db.owner_url,
            "--cell",
            &format!("big={}", s.cell.url),
        ])
        .output()
        .await
        .expect("mercato runs");
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let status: Value = serde_json::from_slice(&status.stdout).expect("JSON");
    assert_eq!(status["incident"], id.to_string());

    // The legacy-orders path (the read switch of the merchant's cell).
    let key = app
        .request(
            reqwest::Method::POST,
            &format!("/v1/merchants/{}/api-keys", merchant.0),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(key.status, 201, "{}", key.body);
    let key = key.body["api_key"].as_str().unwrap().to_owned();
    let created = app
        .post(
            "/v1/legacy-orders",
            &key,
            json!({"customer": {"email": "old@example.com", "name": "Old Customer"},
                   "total": {"amount": 1234, "currency": "EUR"}}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let order = created.body["id"].to_string();
    let read = app.get(&format!("/v1/legacy-orders/{order}"), &key).await;
    assert_eq!(read.status, 200, "{}", read.body);
    assert_eq!(read.body, created.body);
    let in_big: i64 =
        sqlx::query_scalar("select count(*) from legacy_orders where merchant_id = $1")
            .bind(merchant.0)
            .fetch_one(&s.cell_owner)
            .await
            .unwrap();
    assert_eq!(in_big, 1, "written in the merchant's cell");
    let _ = std::fs::remove_dir_all(mail_dir);
}
