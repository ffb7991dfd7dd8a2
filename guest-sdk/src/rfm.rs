//! RFM (recency, frequency, monetary) scores against population cutoffs.

/// Four ascending cutoffs per dimension that split a population into quintiles. The host
/// computes them over all profiles and passes them in as parameters, because a plugin sees
/// one profile at a time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RfmCutoffs {
    /// Days since the last order.
    pub recency_days: [f64; 4],
    /// Number of orders.
    pub frequency: [f64; 4],
    /// Lifetime spend.
    pub monetary: [f64; 4],
}

/// Scores from 1 (worst) to 5 (best) per dimension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RfmScore {
    pub recency: u8,
    pub frequency: u8,
    pub monetary: u8,
}

/// 1 plus the number of cutoffs `value` reaches.
fn quintile(value: f64, cutoffs: &[f64; 4]) -> u8 {
    1 + cutoffs.iter().filter(|c| value >= **c).count() as u8
}

impl RfmCutoffs {
    /// Scores one customer. Recency is inverted: fewer days since the last order score higher.
    pub fn score(&self, days_since_last_order: f64, orders: f64, spend: f64) -> RfmScore {
        RfmScore {
            recency: 6 - quintile(days_since_last_order, &self.recency_days),
            frequency: quintile(orders, &self.frequency),
            monetary: quintile(spend, &self.monetary),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_at_the_cutoffs() {
        let cutoffs = RfmCutoffs { recency_days: [30.0, 60.0, 90.0, 180.0], frequency: [2.0, 3.0, 5.0, 8.0], monetary: [50.0, 100.0, 250.0, 500.0] };
        assert_eq!(cutoffs.score(10.0, 1.0, 10.0), RfmScore { recency: 5, frequency: 1, monetary: 1 });
        assert_eq!(cutoffs.score(180.0, 8.0, 500.0), RfmScore { recency: 1, frequency: 5, monetary: 5 });
        assert_eq!(cutoffs.score(59.9, 2.0, 99.9), RfmScore { recency: 4, frequency: 2, monetary: 2 });
    }
}
