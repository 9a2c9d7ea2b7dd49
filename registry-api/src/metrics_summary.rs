//! The JSON shape of `GET /v1/agent/metrics` (Consul's `MetricsSummary`), which the metrics
//! registry (`metrics.rs`, built with the `serve` feature) renders and which readers of
//! another process's metrics (the bench, tests) decode. Owns: that shape. Must not touch:
//! how metrics are kept or rendered.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `GET /v1/agent/metrics` (Consul's `MetricsSummary`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct MetricsSummary {
    /// When it was taken.
    pub timestamp: String,
    /// Gauges.
    pub gauges: Vec<GaugeValue>,
    /// Points (none are kept; always `[]`, as Consul's usually is).
    pub points: Vec<PointValue>,
    /// Counters.
    pub counters: Vec<SampledValue>,
    /// Timers.
    pub samples: Vec<SampledValue>,
}

impl MetricsSummary {
    /// The count of counter `name` whose labels include `labels`, 0 when there is none:
    /// for readers of another process's `/v1/agent/metrics` (the bench, tests).
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let has = |c: &SampledValue| {
            (labels.iter()).all(|(k, v)| c.labels.get(*k).map(String::as_str) == Some(*v))
        };
        (self.counters.iter())
            .find(|c| c.name == name && has(c))
            .map_or(0, |c| c.count)
    }
}

/// One gauge.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct GaugeValue {
    /// Name.
    pub name: String,
    /// Value.
    pub value: f64,
    /// Labels.
    pub labels: BTreeMap<String, String>,
}

/// One set of points.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct PointValue {
    /// Name.
    pub name: String,
    /// The points.
    pub points: Vec<f64>,
}

/// A counter's or a timer's aggregate.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct SampledValue {
    /// Name.
    pub name: String,
    /// How many.
    pub count: u64,
    /// Sum per second since start.
    pub rate: f64,
    /// Sum (ms for timers).
    pub sum: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
    /// Standard deviation.
    pub stddev: f64,
    /// Labels.
    pub labels: BTreeMap<String, String>,
}
