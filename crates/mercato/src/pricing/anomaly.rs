//! The anomaly check's arithmetic: a merchant's recent orders (the window) against
//! its trailing baseline. Pure; the service feeds it order totals and stores what
//! it finds.
//!
//! Two measures, per currency, over confirmed priced orders:
//! - **average order value**: Σ total / orders, in minor units; out of band when it
//!   moved by more than `aov_change_bps` of the baseline's, either way;
//! - **discount rate**: Σ line discounts / Σ subtotal (goods before discounts), in
//!   basis points; out of band when it moved by more than `discount_rate_change_bps`
//!   (absolute points), either way: a discount that stopped applying is as much an
//!   incident as one that applies too often.
//!
//! Too few orders in the window or the baseline say nothing: no finding.

use serde::Serialize;
use utoipa::ToSchema;

use crate::db::text_enum;

/// Confirmed, priced orders of one currency over a period.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct OrderStats {
    pub orders: i64,
    /// Σ goods before discounts.
    pub subtotal: i64,
    /// Σ line discounts.
    pub discount: i64,
    /// Σ what customers paid.
    pub total: i64,
}

impl OrderStats {
    /// Σ total / orders (rounded down), or none without orders.
    pub fn average_order_value(&self) -> Option<i64> {
        (self.orders > 0).then(|| ratio(self.total, 1, self.orders))
    }

    /// Σ discount / Σ subtotal in basis points, or none when nothing was sold.
    pub fn discount_rate_bps(&self) -> Option<i64> {
        (self.subtotal > 0).then(|| ratio(self.discount, 10_000, self.subtotal))
    }
}

/// `a × scale / b` in 128 bits, saturated to i64 (b > 0).
fn ratio(a: i64, scale: i64, b: i64) -> i64 {
    let q = i128::from(a) * i128::from(scale) / i128::from(b);
    i64::try_from(q).unwrap_or(if q < 0 { i64::MIN } else { i64::MAX })
}

/// How far a measure may move before it is an anomaly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bands {
    /// Orders the window needs before it is judged.
    pub min_window_orders: i64,
    /// Orders the baseline needs before it is trusted.
    pub min_baseline_orders: i64,
    /// Relative move of the average order value (basis points of the baseline's).
    pub aov_change_bps: i64,
    /// Absolute move of the discount rate (basis points).
    pub discount_rate_change_bps: i64,
}

impl Default for Bands {
    fn default() -> Self {
        Bands {
            min_window_orders: 5,
            min_baseline_orders: 20,
            aov_change_bps: 3_000,
            discount_rate_change_bps: 1_000,
        }
    }
}

text_enum! {
    /// What an alert measured.
    #[derive(Serialize, ToSchema)]
    #[serde(rename_all = "snake_case")]
    pub enum AlertKind {
        /// Average order value, in minor units.
        AverageOrderValue = "average_order_value",
        /// Discount rate, in basis points of the subtotal.
        DiscountRate = "discount_rate",
    }
}

/// A measure out of band: what the window shows and what the baseline expected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Finding {
    pub kind: AlertKind,
    pub observed: i64,
    pub expected: i64,
}

/// The window's measures that moved out of band against the baseline's.
pub fn assess(window: &OrderStats, baseline: &OrderStats, bands: &Bands) -> Vec<Finding> {
    if window.orders < bands.min_window_orders || baseline.orders < bands.min_baseline_orders {
        return Vec::new();
    }
    let mut found = Vec::new();
    if let (Some(observed), Some(expected)) =
        (window.average_order_value(), baseline.average_order_value())
    {
        let moved = (i128::from(observed) - i128::from(expected)).abs() * 10_000;
        if moved > i128::from(expected) * i128::from(bands.aov_change_bps) {
            found.push(Finding {
                kind: AlertKind::AverageOrderValue,
                observed,
                expected,
            });
        }
    }
    if let (Some(observed), Some(expected)) =
        (window.discount_rate_bps(), baseline.discount_rate_bps())
    {
        if (i128::from(observed) - i128::from(expected)).abs()
            > i128::from(bands.discount_rate_change_bps)
        {
            found.push(Finding {
                kind: AlertKind::DiscountRate,
                observed,
                expected,
            });
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn stats(orders: i64, subtotal: i64, discount: i64) -> OrderStats {
        OrderStats {
            orders,
            subtotal,
            discount,
            total: subtotal - discount,
        }
    }

    #[test]
    fn a_calculator_that_gives_too_much_away_is_found() {
        // Baseline: 100 orders of 50.00, 5 % off. Window: 10 orders, 40 % off.
        let baseline = stats(100, 500_000, 25_000);
        let window = stats(10, 50_000, 20_000);
        let found = assess(&window, &baseline, &Bands::default());
        assert_eq!(
            found,
            vec![
                Finding {
                    kind: AlertKind::AverageOrderValue,
                    observed: 3_000,
                    expected: 4_750
                },
                Finding {
                    kind: AlertKind::DiscountRate,
                    observed: 4_000,
                    expected: 500
                },
            ]
        );
    }

    #[test]
    fn a_discount_that_stopped_applying_is_found_too() {
        let baseline = stats(100, 500_000, 100_000);
        let window = stats(10, 50_000, 0);
        let kinds: Vec<_> = assess(&window, &baseline, &Bands::default())
            .into_iter()
            .map(|f| f.kind)
            .collect();
        assert_eq!(kinds, vec![AlertKind::DiscountRate]);
    }

    #[test]
    fn the_same_trade_is_quiet_and_too_few_orders_say_nothing() {
        let baseline = stats(100, 500_000, 25_000);
        assert!(assess(&stats(10, 50_000, 2_500), &baseline, &Bands::default()).is_empty());
        assert!(assess(&stats(4, 1, 1), &baseline, &Bands::default()).is_empty());
        assert!(assess(&stats(10, 1, 1), &stats(19, 1, 0), &Bands::default()).is_empty());
    }

    proptest! {
        /// A window that trades exactly like its baseline (same mix, any volume)
        /// raises nothing.
        #[test]
        fn proportional_trade_is_never_an_anomaly(
            orders in 1i64..1_000,
            avg in 0i64..1_000_000,
            rate in 0i64..=10_000,
            scale in 1i64..50,
        ) {
            let one = stats(orders, orders * avg, orders * avg * rate / 10_000);
            let many = stats(orders * scale, one.subtotal * scale, one.discount * scale);
            let any_volume = Bands { min_window_orders: 0, min_baseline_orders: 0, ..Bands::default() };
            prop_assert!(assess(&one, &many, &any_volume).is_empty());
            prop_assert!(assess(&many, &one, &any_volume).is_empty());
        }

        /// Extreme sums (corrupt or adversarial) never overflow.
        #[test]
        fn extremes_do_not_overflow(
            a in any::<i64>(), b in any::<i64>(), c in any::<i64>(), d in any::<i64>(),
            n in 1i64..i64::MAX, m in 1i64..i64::MAX,
        ) {
            let w = OrderStats { orders: n, subtotal: a, discount: b, total: c };
            let base = OrderStats { orders: m, subtotal: d, discount: a, total: b };
            let _ = assess(&w, &base, &Bands::default());
        }
    }
}
