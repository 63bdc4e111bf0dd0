//! Buckets in Redis, shared by every instance: one GCRA check is one atomic Lua
//! script, on Redis's own clock (so instances' clocks need not agree), and each
//! key expires once its bucket has refilled (idle merchants cost no memory).
//! When Redis does not answer within `TIMEOUT`, requests are admitted (fail
//! open) and `rate_limit_store_errors_total` counts it: a limiter never fails
//! a request.

use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use tokio::sync::Mutex;

use super::model::{Decision, Rate, RouteClass};
use crate::db::MerchantId;

/// How long a check may wait for Redis before the request is admitted unchecked.
const TIMEOUT: Duration = Duration::from_millis(100);
/// How often a lost connection is tried again (meanwhile: fail open at once).
const RECONNECT_EVERY: Duration = Duration::from_secs(1);

/// KEYS[1]: the bucket. ARGV[1]: emission interval, ARGV[2]: capacity (µs).
/// Returns {admitted (1/0), µs the arrival time is ahead of now after it}.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local nxt = tat + interval
if nxt - now <= capacity then
  redis.call('SET', KEYS[1], nxt, 'PX', math.ceil((nxt - now) / 1000) + 1)
  return {1, nxt - now}
end
return {0, tat - now}
";

/// KEYS[1]: today's counter. ARGV[1]: the limit. Returns the count after this
/// checkout, or -1 when it would pass the limit (then nothing is counted).
const DAILY: &str = r"
local used = tonumber(redis.call('GET', KEYS[1]) or 0)
if used >= tonumber(ARGV[1]) then return -1 end
used = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], 172800)
return used
";

pub struct SharedBuckets {
    client: redis::Client,
    script: redis::Script,
    daily: redis::Script,
    /// The connection, and when one was last tried while there was none.
    conn: Mutex<(Option<MultiplexedConnection>, Option<Instant>)>,
}

impl SharedBuckets {
    pub fn new(url: &str) -> Result<SharedBuckets, redis::RedisError> {
        Ok(SharedBuckets {
            client: redis::Client::open(url)?,
            script: redis::Script::new(GCRA),
            daily: redis::Script::new(DAILY),
            conn: Mutex::new((None, None)),
        })
    }

    async fn connection(&self) -> Option<MultiplexedConnection> {
        let mut held = self.conn.lock().await;
        if let Some(conn) = &held.0 {
            return Some(conn.clone());
        }
        if held.1.is_some_and(|at| at.elapsed() < RECONNECT_EVERY) {
            return None;
        }
        held.1 = Some(Instant::now());
        match tokio::time::timeout(TIMEOUT, self.client.get_multiplexed_async_connection()).await {
            Ok(Ok(conn)) => {
                held.0 = Some(conn.clone());
                Some(conn)
            }
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "rate limits: Redis unreachable; admitting unchecked");
                None
            }
            Err(_) => {
                tracing::warn!("rate limits: Redis did not answer; admitting unchecked");
                None
            }
        }
    }

    /// Today's checkouts of `merchant` (see `Limiter::count_daily`); admits
    /// (fail open) when Redis does not answer.
    pub async fn count_daily(&self, merchant: MerchantId, day: i64, limit: u32) -> Option<u32> {
        let key = format!("mercato:dq:{}:{day}", merchant.0.simple());
        let answer = match self.connection().await {
            Some(mut conn) => {
                let mut invocation = self.daily.key(&key);
                invocation.arg(limit);
                let call = invocation.invoke_async::<i64>(&mut conn);
                tokio::time::timeout(TIMEOUT, call)
                    .await
                    .ok()
                    .and_then(Result::ok)
            }
            None => None,
        };
        match answer {
            Some(used) if used < 0 => None,
            Some(used) => Some(u32::try_from(used).unwrap_or(u32::MAX)),
            None => {
                metrics::counter!("rate_limit_store_errors_total").increment(1);
                Some(0)
            }
        }
    }

    pub async fn check(&self, merchant: MerchantId, class: RouteClass, rate: Rate) -> Decision {
        let interval = (1_000_000.0 / rate.per_second).max(1.0);
        let capacity = interval * f64::from(rate.burst);
        let key = format!("mercato:rl:{}:{}", merchant.0.simple(), class.as_str());
        let answer = match self.connection().await {
            Some(mut conn) => {
                let mut invocation = self.script.key(&key);
                invocation
                    .arg(interval.round() as i64)
                    .arg(capacity.round() as i64);
                let call = invocation.invoke_async::<(i64, i64)>(&mut conn);
                match tokio::time::timeout(TIMEOUT, call).await {
                    Ok(Ok(answer)) => Some(answer),
                    Ok(Err(err)) => {
                        tracing::warn!(error = %err, "rate limits: Redis check failed; admitting unchecked");
                        if err.is_connection_dropped() || err.is_io_error() {
                            self.conn.lock().await.0 = None;
                        }
                        None
                    }
                    Err(_) => None,
                }
            }
            None => None,
        };
        match answer {
            Some((admitted, used_us)) => {
                Decision::from_usage(rate, admitted == 1, used_us as f64 / 1_000_000.0)
            }
            None => {
                metrics::counter!("rate_limit_store_errors_total").increment(1);
                Decision::unchecked(rate)
            }
        }
    }
}
