//! Rate limits without I/O: a merchant's plan (a rate and a burst per route
//! class), parsed with an error per bad field, and GCRA, the generic cell rate
//! algorithm, as a pure function of the stored "theoretical arrival time".

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::validation::FieldErrors;

/// Which limit a request counts against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RouteClass {
    /// GET and HEAD.
    Reads,
    /// Every other method, but checkouts.
    Writes,
    /// `POST /v1/checkouts`.
    Checkout,
}

impl RouteClass {
    pub const ALL: [RouteClass; 3] = [RouteClass::Reads, RouteClass::Writes, RouteClass::Checkout];

    pub fn as_str(self) -> &'static str {
        match self {
            RouteClass::Reads => "reads",
            RouteClass::Writes => "writes",
            RouteClass::Checkout => "checkout",
        }
    }
}

/// Requests per second with a burst: the bucket holds `burst` requests and
/// refills at `per_second`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Rate {
    pub per_second: f64,
    pub burst: u32,
}

/// A merchant's limits; a class without a rate is not limited.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Plan {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reads: Option<Rate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub writes: Option<Rate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkout: Option<Rate>,
    /// The merchant's requests in flight at once, at most; more wait their turn
    /// (so one merchant's flood cannot take the whole connection pool).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrent: Option<u32>,
    /// Checkouts per UTC day, at most.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily_checkouts: Option<u32>,
}

impl Plan {
    pub fn rate(&self, class: RouteClass) -> Option<Rate> {
        match class {
            RouteClass::Reads => self.reads,
            RouteClass::Writes => self.writes,
            RouteClass::Checkout => self.checkout,
        }
    }

    /// The demo merchant's plan.
    pub fn demo() -> Plan {
        Plan {
            reads: Some(Rate {
                per_second: 200.0,
                burst: 400,
            }),
            writes: Some(Rate {
                per_second: 100.0,
                burst: 100,
            }),
            checkout: Some(Rate {
                per_second: 50.0,
                burst: 100,
            }),
            concurrent: Some(16),
            daily_checkouts: Some(100_000),
        }
    }

    /// Parses `rate_limits` from the API, naming every bad field under `prefix`
    /// (`rate_limits.writes.per_second`, `rate_limits.bulk` for an unknown class).
    pub fn parse(
        value: &serde_json::Value,
        prefix: &str,
        errors: &mut FieldErrors,
    ) -> Option<Plan> {
        let Some(object) = value.as_object() else {
            errors.push(
                prefix,
                "must be an object of route classes: reads, writes, checkout",
            );
            return None;
        };
        let mut plan = Plan::default();
        let mut ok = true;
        for (name, rate) in object {
            let field = format!("{prefix}.{name}");
            let count = |max: u64, errors: &mut FieldErrors| {
                let n = rate
                    .as_u64()
                    .filter(|n| (1..=max).contains(n))
                    .and_then(|n| u32::try_from(n).ok());
                if n.is_none() {
                    errors.push(
                        field.clone(),
                        format!("must be a whole number from 1 to {max}"),
                    );
                }
                n
            };
            match name.as_str() {
                "concurrent" => {
                    plan.concurrent = count(100_000, errors);
                    ok &= plan.concurrent.is_some();
                    continue;
                }
                "daily_checkouts" => {
                    plan.daily_checkouts = count(100_000_000, errors);
                    ok &= plan.daily_checkouts.is_some();
                    continue;
                }
                _ => {}
            }
            let class = RouteClass::ALL.into_iter().find(|c| c.as_str() == name);
            let Some(class) = class else {
                errors.push(
                    field,
                    "is not a route class (reads, writes, checkout), concurrent or daily_checkouts",
                );
                ok = false;
                continue;
            };
            match parse_rate(rate, &field, errors) {
                Some(rate) => match class {
                    RouteClass::Reads => plan.reads = Some(rate),
                    RouteClass::Writes => plan.writes = Some(rate),
                    RouteClass::Checkout => plan.checkout = Some(rate),
                },
                None => ok = false,
            }
        }
        ok.then_some(plan)
    }
}

fn parse_rate(value: &serde_json::Value, field: &str, errors: &mut FieldErrors) -> Option<Rate> {
    let Some(object) = value.as_object() else {
        errors.push(field, "must be an object {per_second, burst}");
        return None;
    };
    let mut ok = true;
    for key in object
        .keys()
        .filter(|k| *k != "per_second" && *k != "burst")
    {
        errors.push(
            format!("{field}.{key}"),
            "is not a field of a rate (per_second, burst)",
        );
        ok = false;
    }
    let per_second = object.get("per_second").and_then(|v| v.as_f64());
    let per_second = match per_second {
        Some(r) if r.is_finite() && r > 0.0 && r <= 1_000_000.0 => Some(r),
        _ => {
            errors.push(
                format!("{field}.per_second"),
                "must be a number above 0 (at most 1,000,000)",
            );
            None
        }
    };
    let burst = object
        .get("burst")
        .and_then(|v| v.as_u64())
        .filter(|b| (1..=1_000_000).contains(b))
        .and_then(|b| u32::try_from(b).ok());
    if burst.is_none() {
        errors.push(
            format!("{field}.burst"),
            "must be a whole number from 1 to 1,000,000",
        );
    }
    match (per_second, burst, ok) {
        (Some(per_second), Some(burst), true) => Some(Rate { per_second, burst }),
        _ => None,
    }
}

/// What one GCRA check decided.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Decision {
    pub allowed: bool,
    /// The stored arrival time to keep (unchanged when refused).
    pub tat: f64,
    /// Requests that would still be admitted right now.
    pub remaining: u32,
    /// Seconds until the bucket is full again.
    pub reset_seconds: f64,
    /// When refused: seconds until one request would be admitted.
    pub retry_after_seconds: f64,
}

/// GCRA: each request moves the theoretical arrival time (`tat`) one emission
/// interval (1 / rate) later; a request is admitted when that stays within
/// `burst` intervals of now. `tat` of `None` (or in the past) is a full bucket.
pub fn gcra(rate: Rate, tat: Option<f64>, now: f64) -> Decision {
    let interval = 1.0 / rate.per_second;
    let capacity = interval * f64::from(rate.burst);
    let start = tat.unwrap_or(now).max(now);
    let next = start + interval;
    // A hair of slack for float rounding at the boundary.
    let allowed = next - now <= capacity + 1e-9;
    let kept = if allowed { next } else { start };
    Decision {
        tat: kept,
        ..Decision::from_usage(rate, allowed, kept - now)
    }
}

impl Decision {
    /// The decision when the bucket's arrival time, after this request, is
    /// `used` seconds ahead of now (a store that keeps the time itself, such as
    /// Redis, answers only that). `tat` is left 0: the store keeps it.
    pub fn from_usage(rate: Rate, allowed: bool, used: f64) -> Decision {
        let interval = 1.0 / rate.per_second;
        let capacity = interval * f64::from(rate.burst);
        let remaining = ((capacity - used) / interval + 1e-9).floor().max(0.0);
        Decision {
            allowed,
            tat: 0.0,
            remaining: remaining.min(f64::from(rate.burst)) as u32,
            reset_seconds: used.max(0.0),
            retry_after_seconds: if allowed {
                0.0
            } else {
                (used + interval - capacity).max(0.0)
            },
        }
    }

    /// Admitted without counting (the shared store did not answer: fail open).
    pub fn unchecked(rate: Rate) -> Decision {
        Decision::from_usage(rate, true, 0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rate(per_second: f64, burst: u32) -> Rate {
        Rate { per_second, burst }
    }

    #[test]
    fn a_burst_is_admitted_at_once_then_one_request_per_interval() {
        let r = rate(10.0, 5);
        let mut tat = None;
        for i in 0..5 {
            let d = gcra(r, tat, 100.0);
            assert!(d.allowed, "request {i}");
            assert_eq!(d.remaining, 4 - i);
            tat = Some(d.tat);
        }
        let refused = gcra(r, tat, 100.0);
        assert!(!refused.allowed);
        assert!(
            (refused.retry_after_seconds - 0.1).abs() < 1e-6,
            "{refused:?}"
        );
        assert!((refused.reset_seconds - 0.5).abs() < 1e-6);
        assert!(gcra(r, tat, 100.1).allowed, "one interval later, one more");
    }

    proptest! {
        /// In any stretch of time, GCRA admits at most burst + rate × its length.
        #[test]
        fn never_more_than_the_burst_plus_the_rate_over_time(
            per_second in 0.5f64..500.0,
            burst in 1u32..50,
            gaps in proptest::collection::vec(0.0f64..0.05, 1..400),
        ) {
            let r = rate(per_second, burst);
            let mut tat = None;
            let mut now = 0.0;
            let mut admitted: Vec<f64> = Vec::new();
            for gap in gaps {
                now += gap;
                let d = gcra(r, tat, now);
                prop_assert!(d.remaining <= burst);
                if d.allowed {
                    admitted.push(now);
                    tat = Some(d.tat);
                } else {
                    prop_assert!(d.retry_after_seconds > 0.0);
                }
            }
            for (i, start) in admitted.iter().enumerate() {
                for (j, end) in admitted.iter().enumerate().skip(i) {
                    let n = (j - i + 1) as f64;
                    prop_assert!(n <= f64::from(burst) + per_second * (end - start) + 1e-6,
                        "{n} admitted in {} s", end - start);
                }
            }
        }
    }

    #[test]
    fn a_plan_names_each_bad_field() {
        let mut errors = FieldErrors::default();
        let plan = Plan::parse(
            &serde_json::json!({
                "reads": {"per_second": 0, "burst": 10},
                "writes": {"per_second": 5, "burst": 0},
                "checkout": {"per_second": -1, "burst": 1, "x": 1},
                "bulk": {"per_second": 1, "burst": 1}
            }),
            "rate_limits",
            &mut errors,
        );
        assert!(plan.is_none());
        let invalid = errors.finish::<()>(None).expect_err("invalid");
        let fields = invalid.fields();
        for f in [
            "rate_limits.reads.per_second",
            "rate_limits.writes.burst",
            "rate_limits.checkout.per_second",
            "rate_limits.checkout.x",
            "rate_limits.bulk",
        ] {
            assert!(fields.contains(&f), "{f} in {fields:?}");
        }
        let mut errors = FieldErrors::default();
        let plan = Plan::parse(
            &serde_json::json!({"writes": {"per_second": 100, "burst": 100}}),
            "rate_limits",
            &mut errors,
        );
        assert_eq!(plan.and_then(|p| p.writes), Some(rate(100.0, 100)));
    }
}
