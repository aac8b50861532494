//! Base-2 exponential histogram, the OpenTelemetry default-worthy aggregation for latencies:
//! relative error bounded by the scale, no bucket layout to guess, a fixed number of buckets.
//!
//! Bucket `i` at scale `s` holds values in `(base^i, base^(i+1)]` with `base = 2^(2^-s)`. The
//! histogram starts at the finest scale and halves its resolution (merging neighbours) whenever
//! the recorded range would need more than `max_size` buckets, as the OTel SDKs do.

/// Finest scale used (the OTel SDK default).
pub const MAX_SCALE: i32 = 20;
/// Buckets kept at most (the OTel SDK default).
pub const MAX_SIZE: usize = 160;

/// One exponential histogram (positive values; zero and below go to the zero bucket).
#[derive(Debug, Clone)]
pub struct ExpHistogram {
    scale: i32,
    /// Index of `counts[0]`.
    offset: i32,
    counts: Vec<u64>,
    zero_count: u64,
}

impl Default for ExpHistogram {
    fn default() -> Self {
        Self {
            scale: MAX_SCALE,
            offset: 0,
            counts: Vec::new(),
            zero_count: 0,
        }
    }
}

impl ExpHistogram {
    /// Records one value.
    pub fn record(&mut self, value: f64) {
        if value.is_nan() || value <= f64::MIN_POSITIVE {
            self.zero_count += 1;
            return;
        }
        let value = value.min(f64::MAX);
        let mut index = index(value, self.scale);
        if self.counts.is_empty() {
            self.offset = index;
            self.counts.push(1);
            return;
        }
        let low = i64::from(self.offset.min(index));
        let high = i64::from(self.last_index().max(index));
        let change = scale_change(low, high);
        if change > 0 {
            self.downscale(change);
            index = self::index(value, self.scale);
        }
        if index < self.offset {
            let grow = (self.offset - index) as usize;
            self.counts.splice(0..0, std::iter::repeat_n(0, grow));
            self.offset = index;
        } else if index > self.last_index() {
            self.counts.resize((index - self.offset) as usize + 1, 0);
        }
        self.counts[(index - self.offset) as usize] += 1;
    }

    fn last_index(&self) -> i32 {
        self.offset + self.counts.len() as i32 - 1
    }

    /// Halves the resolution `by` times, merging buckets.
    fn downscale(&mut self, by: i32) {
        let first = self.offset >> by;
        let last = self.last_index() >> by;
        let mut merged = vec![0u64; (last - first) as usize + 1];
        for (i, c) in self.counts.iter().enumerate() {
            merged[(((self.offset + i as i32) >> by) - first) as usize] += c;
        }
        self.counts = merged;
        self.offset = first;
        self.scale -= by;
    }

    pub fn scale(&self) -> i32 {
        self.scale
    }

    /// Index of the first positive bucket.
    pub fn offset(&self) -> i32 {
        self.offset
    }

    /// Counts of the positive buckets from [`Self::offset`] on.
    pub fn counts(&self) -> &[u64] {
        &self.counts
    }

    pub fn zero_count(&self) -> u64 {
        self.zero_count
    }
}

/// How many halvings make `low..=high` fit in [`MAX_SIZE`] buckets.
fn scale_change(mut low: i64, mut high: i64) -> i32 {
    let mut change = 0;
    while high - low >= MAX_SIZE as i64 {
        low >>= 1;
        high >>= 1;
        change += 1;
    }
    change
}

/// The bucket of `value` (positive, normal) at `scale`. Exact powers of two are the upper
/// bound of their bucket, so they are computed from the exponent bits, not a logarithm.
pub fn index(value: f64, scale: i32) -> i32 {
    let bits = value.to_bits();
    let exponent = ((bits >> 52) & 0x7ff) as i32 - 1023;
    let power_of_two = bits & ((1u64 << 52) - 1) == 0;
    if scale <= 0 {
        let e = if power_of_two { exponent - 1 } else { exponent };
        return e >> -scale;
    }
    if power_of_two {
        return (exponent << scale) - 1;
    }
    let factor = f64::from(1u32 << scale) / std::f64::consts::LN_2;
    // An index within one rounding error of a bucket boundary is settled by the exact bound.
    let guess = (value.ln() * factor).ceil() as i32 - 1;
    let lower = lower_bound(guess, scale);
    if value <= lower {
        guess - 1
    } else if value > lower_bound(guess + 1, scale) {
        guess + 1
    } else {
        guess
    }
}

/// Lower (exclusive) bound of bucket `index` at `scale`: `2^(index / 2^scale)`.
pub fn lower_bound(index: i32, scale: i32) -> f64 {
    (f64::from(index) * (-f64::from(scale)).exp2()).exp2()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn powers_of_two_close_their_bucket() {
        assert_eq!(index(1.0, 0), -1);
        assert_eq!(index(2.0, 0), 0);
        assert_eq!(index(3.0, 0), 1);
        assert_eq!(index(4.0, 0), 1);
        assert_eq!(index(4.0, -1), 0);
        assert_eq!(index(5.0, -1), 1);
        assert_eq!(index(1.0, 3), -1);
        assert_eq!(index(2.0, 3), 7);
        assert_eq!(index(0.5, 20), -(1 << 20) - 1);
    }

    #[test]
    fn every_value_lies_in_its_bucket() {
        let mut rng = fastrand::Rng::with_seed(7);
        for scale in [-2, 0, 1, 4, 8, 20] {
            for _ in 0..2000 {
                let v = (rng.f64() * 40.0 - 20.0).exp2();
                let i = index(v, scale);
                let (lo, hi) = (lower_bound(i, scale), lower_bound(i + 1, scale));
                assert!(
                    v > lo * (1.0 - 1e-12) && v <= hi * (1.0 + 1e-12),
                    "{v} at scale {scale}: bucket {i} = ({lo}, {hi}]"
                );
            }
        }
    }

    #[test]
    fn downscales_to_fit_and_keeps_every_count() {
        let mut h = ExpHistogram::default();
        let mut rng = fastrand::Rng::with_seed(3);
        let values: Vec<f64> = (0..10_000)
            .map(|_| 1e-5 * (rng.f64() * 20.0).exp())
            .collect();
        for v in &values {
            h.record(*v);
        }
        h.record(0.0);
        assert!(h.counts().len() <= MAX_SIZE, "{} buckets", h.counts().len());
        assert!(
            h.scale() < MAX_SCALE && h.scale() >= 0,
            "scale {}",
            h.scale()
        );
        assert_eq!(h.counts().iter().sum::<u64>(), 10_000);
        assert_eq!(h.zero_count(), 1);
        // Each value still lies in the bucket its final-scale index names.
        let mut expected = vec![0u64; h.counts().len()];
        for v in &values {
            expected[(index(*v, h.scale()) - h.offset()) as usize] += 1;
        }
        assert_eq!(expected, h.counts());
    }

    #[test]
    fn one_value_keeps_the_finest_scale() {
        let mut h = ExpHistogram::default();
        h.record(0.25);
        h.record(0.25);
        assert_eq!(h.scale(), MAX_SCALE);
        assert_eq!(h.counts(), &[2]);
        assert_eq!(h.offset(), index(0.25, MAX_SCALE));
    }
}
