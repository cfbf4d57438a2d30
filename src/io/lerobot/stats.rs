//! Per-episode and dataset statistics as lerobot computes them (`datasets/compute_stats.py`):
//! per feature dimension `min`, `max`, `mean`, `std` (population), `count` and the quantiles
//! `q01 q10 q50 q90 q99`; images per channel in [0, 1] with shape [3, 1, 1], computed on a subsample of
//! frames (`sample_indices`) downsampled to about 150 px (`auto_downsample_height_width`).
//! Episode stats are merged with `aggregate_stats` (count-weighted mean, parallel variance).
//!
//! Two deliberate differences: quantiles are exact (numpy's linear interpolation) where lerobot 0.4
//! approximates them with 5000-bin histograms, and image `std` is computed in f64 where lerobot 0.4's
//! `RunningQuantileStats` squares uint8 pixels in place (overflowing, so its image std is ~0).

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Float64Array, Int64Array, ListArray};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, Float64Type};
use image::RgbImage;
use serde_json::{json, Value};

/// Quantiles lerobot stores (`DEFAULT_QUANTILES`), with their keys.
pub const QUANTILES: [(f64, &str); 5] = [
    (0.01, "q01"),
    (0.10, "q10"),
    (0.50, "q50"),
    (0.90, "q90"),
    (0.99, "q99"),
];

/// How the values of a feature are typed in stats (lerobot keeps the dtype for min/max).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Float,
    Int,
    Bool,
    /// Per-channel image statistics in [0, 1], shape [C, 1, 1].
    Image,
}

/// Statistics of one feature: every vector has one entry per dimension (or channel).
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureStats {
    pub kind: Kind,
    pub min: Vec<f64>,
    pub max: Vec<f64>,
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
    pub count: u64,
    /// One vector per entry of [`QUANTILES`].
    pub quantiles: Vec<Vec<f64>>,
}

/// Stats of every feature, by key.
pub type Stats = BTreeMap<String, FeatureStats>;

/// `estimate_num_samples` with lerobot's defaults (min 100, max 10 000, power 0.75).
pub fn estimate_num_samples(len: usize) -> usize {
    let min = 100.min(len);
    min.max(((len as f64).powf(0.75) as usize).min(10_000))
}

/// `sample_indices`: evenly spaced frame indices (numpy `round(linspace(0, n-1, k))`, half to even).
pub fn sample_indices(len: usize) -> Vec<usize> {
    let k = estimate_num_samples(len);
    if k == 0 {
        return Vec::new();
    }
    if k == 1 {
        return vec![0];
    }
    let step = (len - 1) as f64 / (k - 1) as f64;
    (0..k)
        .map(|i| (i as f64 * step).round_ties_even() as usize)
        .collect()
}

/// Stride of `auto_downsample_height_width` (target 150 px, only when the long side is >= 300).
pub fn downsample_stride(height: u32, width: u32) -> u32 {
    if width.max(height) < 300 {
        return 1;
    }
    let f = if width > height {
        width / 150
    } else {
        height / 150
    };
    f.max(1)
}

fn quantile_sorted(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, frac) = (pos.floor() as usize, pos - pos.floor());
    let hi = (lo + 1).min(sorted.len() - 1);
    sorted[lo] + (sorted[hi] - sorted[lo]) * frac
}

/// Stats of `rows` x `dims` values laid out row-major; `count` is what lerobot records as the sample count.
fn stats_of(values: &[f64], dims: usize, kind: Kind, count: u64) -> FeatureStats {
    let rows = values.len().checked_div(dims).unwrap_or(0);
    let mut s = FeatureStats {
        kind,
        min: vec![f64::INFINITY; dims],
        max: vec![f64::NEG_INFINITY; dims],
        mean: vec![0.0; dims],
        std: vec![0.0; dims],
        count,
        quantiles: vec![vec![0.0; dims]; QUANTILES.len()],
    };
    let mut column = Vec::with_capacity(rows);
    for d in 0..dims {
        column.clear();
        column.extend((0..rows).map(|r| values[r * dims + d]));
        let n = column.len().max(1) as f64;
        let mean = column.iter().sum::<f64>() / n;
        let var = column.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
        column.sort_by(f64::total_cmp);
        s.min[d] = column.first().copied().unwrap_or(f64::NAN);
        s.max[d] = column.last().copied().unwrap_or(f64::NAN);
        s.mean[d] = mean;
        s.std[d] = var.sqrt();
        for (qi, (q, _)) in QUANTILES.iter().enumerate() {
            // lerobot's `_compute_basic_stats`: with fewer than 2 samples every quantile is the mean.
            s.quantiles[qi][d] = if rows < 2 {
                mean
            } else {
                quantile_sorted(&column, *q)
            };
        }
    }
    s
}

/// Flatten a numeric column (scalars, or one level of fixed-size / variable lists) to row-major f64
/// with its per-row dimension. `None` for columns lerobot does not compute stats for (strings, structs).
pub fn column_values(a: &dyn Array) -> Option<(Vec<f64>, usize, Kind)> {
    let kind_of = |t: &DataType| match t {
        DataType::Boolean => Some(Kind::Bool),
        t if t.is_integer() => Some(Kind::Int),
        t if t.is_floating() => Some(Kind::Float),
        _ => None,
    };
    let to_f64 = |a: &dyn Array| -> Option<Vec<f64>> {
        let c = arrow::compute::cast(a, &DataType::Float64).ok()?;
        Some(
            c.as_primitive::<Float64Type>()
                .iter()
                .map(|v| v.unwrap_or(f64::NAN))
                .collect(),
        )
    };
    match a.data_type() {
        DataType::FixedSizeList(f, n) => {
            let kind = kind_of(f.data_type())?;
            let l = a.as_fixed_size_list();
            let offset = l.offset() * *n as usize;
            let vals = to_f64(&l.values().slice(offset, l.len() * *n as usize))?;
            Some((vals, *n as usize, kind))
        }
        DataType::List(f) | DataType::LargeList(f) => {
            let kind = kind_of(f.data_type())?;
            let rows: Vec<ArrayRef> = match a.data_type() {
                DataType::List(_) => a
                    .as_list::<i32>()
                    .iter()
                    .map(|r| r.unwrap_or_else(|| arrow::array::new_empty_array(f.data_type())))
                    .collect(),
                _ => a
                    .as_list::<i64>()
                    .iter()
                    .map(|r| r.unwrap_or_else(|| arrow::array::new_empty_array(f.data_type())))
                    .collect(),
            };
            let dims = rows.first().map(|r| r.len()).unwrap_or(0);
            if rows.iter().any(|r| r.len() != dims) {
                return None;
            }
            let mut vals = Vec::with_capacity(rows.len() * dims);
            for r in rows {
                vals.extend(to_f64(r.as_ref())?);
            }
            Some((vals, dims, kind))
        }
        t => Some((to_f64(a)?, 1, kind_of(t)?)),
    }
}

/// Stats of one table column (`None` when lerobot skips it).
pub fn column_stats(a: &dyn Array) -> Option<FeatureStats> {
    let (values, dims, kind) = column_values(a)?;
    Some(stats_of(&values, dims, kind, a.len() as u64))
}

/// Per-channel image stats in [0, 1] over the sampled, downsampled frames (`compute_episode_stats`).
/// `frames` are all the frames of the episode; only the sampled ones are read.
pub fn image_stats(frames: &[RgbImage]) -> FeatureStats {
    let idx = sample_indices(frames.len());
    let mut values = Vec::new();
    for &i in &idx {
        let f = &frames[i];
        let s = downsample_stride(f.height(), f.width());
        for y in (0..f.height()).step_by(s as usize) {
            for x in (0..f.width()).step_by(s as usize) {
                let p = f.get_pixel(x, y).0;
                values.extend(p.iter().map(|&v| v as f64 / 255.0));
            }
        }
    }
    stats_of(&values, 3, Kind::Image, idx.len() as u64)
}

/// `aggregate_feature_stats`: min of mins, max of maxes, count-weighted mean, parallel-algorithm variance,
/// count-weighted quantiles.
pub fn aggregate(parts: &[&FeatureStats]) -> Option<FeatureStats> {
    let first = *parts.first()?;
    let dims = first.mean.len();
    let total: u64 = parts.iter().map(|p| p.count).sum();
    let tf = total.max(1) as f64;
    let mut out = FeatureStats {
        kind: first.kind,
        min: vec![f64::INFINITY; dims],
        max: vec![f64::NEG_INFINITY; dims],
        mean: vec![0.0; dims],
        std: vec![0.0; dims],
        count: total,
        quantiles: vec![vec![0.0; dims]; QUANTILES.len()],
    };
    for d in 0..dims {
        let mean = parts
            .iter()
            .map(|p| p.mean[d] * p.count as f64)
            .sum::<f64>()
            / tf;
        let var = parts
            .iter()
            .map(|p| (p.std[d] * p.std[d] + (p.mean[d] - mean).powi(2)) * p.count as f64)
            .sum::<f64>()
            / tf;
        out.mean[d] = mean;
        out.std[d] = var.sqrt();
        out.min[d] = parts.iter().map(|p| p.min[d]).fold(f64::INFINITY, f64::min);
        out.max[d] = parts
            .iter()
            .map(|p| p.max[d])
            .fold(f64::NEG_INFINITY, f64::max);
        for q in 0..QUANTILES.len() {
            out.quantiles[q][d] = parts
                .iter()
                .map(|p| p.quantiles[q][d] * p.count as f64)
                .sum::<f64>()
                / tf;
        }
    }
    Some(out)
}

/// Merge `episode` into the running dataset stats.
pub fn merge_into(total: &mut Stats, episode: &Stats) {
    for (k, s) in episode {
        let merged = match total.get(k) {
            Some(t) => aggregate(&[t, s]),
            None => Some(s.clone()),
        };
        if let Some(m) = merged {
            total.insert(k.clone(), m);
        }
    }
}

impl FeatureStats {
    fn typed(&self, v: &[f64]) -> Value {
        match self.kind {
            Kind::Int => json!(v.iter().map(|x| *x as i64).collect::<Vec<_>>()),
            Kind::Bool => json!(v.iter().map(|x| *x != 0.0).collect::<Vec<_>>()),
            Kind::Float => json!(v),
            Kind::Image => json!(v.iter().map(|x| vec![vec![*x]]).collect::<Vec<_>>()),
        }
    }
    fn float(&self, v: &[f64]) -> Value {
        match self.kind {
            Kind::Image => json!(v.iter().map(|x| vec![vec![*x]]).collect::<Vec<_>>()),
            _ => json!(v),
        }
    }

    /// `{"min": ..., "max": ..., "mean": ..., "std": ..., "count": [n], "q01": ...}` as lerobot serialises it.
    pub fn to_json(&self) -> Value {
        let mut m = serde_json::Map::new();
        m.insert("min".into(), self.typed(&self.min));
        m.insert("max".into(), self.typed(&self.max));
        m.insert("mean".into(), self.float(&self.mean));
        m.insert("std".into(), self.float(&self.std));
        m.insert("count".into(), json!([self.count]));
        for (q, (_, key)) in self.quantiles.iter().zip(QUANTILES) {
            m.insert(key.into(), self.float(q));
        }
        Value::Object(m)
    }

    /// The `stats/<feature>/<stat>` columns of one row of lerobot's episodes table, as
    /// (stat name, one-row arrow array) pairs: list<double> (list<int64>/list<bool> for integer/bool
    /// min and max), images nested [C][1][1].
    pub fn to_columns(&self) -> Vec<(String, ArrayRef)> {
        let mut out = Vec::new();
        let mut push = |name: &str, v: &[f64], typed: bool| {
            let values: ArrayRef = match (self.kind, typed) {
                (Kind::Int, true) => Arc::new(Int64Array::from(
                    v.iter().map(|x| *x as i64).collect::<Vec<_>>(),
                )),
                (Kind::Bool, true) => Arc::new(BooleanArray::from(
                    v.iter().map(|x| *x != 0.0).collect::<Vec<_>>(),
                )),
                _ => Arc::new(Float64Array::from(v.to_vec())),
            };
            let arr = if self.kind == Kind::Image {
                // [C] -> [C][1][1]
                let inner = list_each(values);
                let mid = list_each(inner);
                list_all(mid)
            } else {
                list_all(values)
            };
            out.push((name.to_string(), arr));
        };
        push("min", &self.min, true);
        push("max", &self.max, true);
        push("mean", &self.mean, false);
        push("std", &self.std, false);
        out.push((
            "count".to_string(),
            list_all(Arc::new(Int64Array::from(vec![self.count as i64]))),
        ));
        for (q, (_, key)) in self.quantiles.iter().zip(QUANTILES) {
            let values: ArrayRef = Arc::new(Float64Array::from(q.clone()));
            let arr = if self.kind == Kind::Image {
                list_all(list_each(list_each(values)))
            } else {
                list_all(values)
            };
            out.push((key.to_string(), arr));
        }
        out
    }
}

/// Every value in its own one-element list.
fn list_each(values: ArrayRef) -> ArrayRef {
    let field = Arc::new(Field::new("element", values.data_type().clone(), true));
    let n = values.len();
    Arc::new(ListArray::new(
        field,
        OffsetBuffer::from_lengths(std::iter::repeat_n(1, n)),
        values,
        None,
    ))
}

/// All values in one list (one row).
fn list_all(values: ArrayRef) -> ArrayRef {
    let field = Arc::new(Field::new("element", values.data_type().clone(), true));
    let n = values.len();
    Arc::new(ListArray::new(
        field,
        OffsetBuffer::from_lengths([n]),
        values,
        None,
    ))
}

/// The whole `meta/stats.json` document.
pub fn stats_json(stats: &Stats) -> Value {
    Value::Object(
        stats
            .iter()
            .map(|(k, s)| (k.clone(), s.to_json()))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_matches_lerobot_heuristic() {
        // compute_stats.py docstring: 1..~500 -> 100 samples (or all), 1000 -> 177, 10000 -> 1000.
        assert_eq!(estimate_num_samples(40), 40);
        assert_eq!(estimate_num_samples(400), 100);
        assert_eq!(estimate_num_samples(1000), 177);
        assert_eq!(estimate_num_samples(10_000), 1000);
        let idx = sample_indices(1000);
        assert_eq!((idx.len(), idx[0], *idx.last().unwrap()), (177, 0, 999));
        assert_eq!(sample_indices(5), vec![0, 1, 2, 3, 4]);
        assert_eq!(downsample_stride(360, 640), 4);
        assert_eq!(downsample_stride(64, 96), 1);
    }

    #[test]
    fn aggregate_equals_stats_of_concatenation() {
        let a: Vec<f64> = (0..7).map(|i| (i as f64 * 0.37).sin()).collect();
        let b: Vec<f64> = (0..12)
            .map(|i| (i as f64 * 1.3).cos() * 2.0 + 0.5)
            .collect();
        let sa = stats_of(&a, 1, Kind::Float, a.len() as u64);
        let sb = stats_of(&b, 1, Kind::Float, b.len() as u64);
        let all: Vec<f64> = a.iter().chain(&b).copied().collect();
        let whole = stats_of(&all, 1, Kind::Float, all.len() as u64);
        let agg = aggregate(&[&sa, &sb]).unwrap();
        assert_eq!(agg.count, 19);
        assert!((agg.mean[0] - whole.mean[0]).abs() < 1e-12);
        assert!((agg.std[0] - whole.std[0]).abs() < 1e-12);
        assert_eq!((agg.min[0], agg.max[0]), (whole.min[0], whole.max[0]));
    }
}
