//! foyer's disk blocks by state, read through its metrics registry (mixtrics): the only
//! way foyer says how much of its disk tier holds data.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// foyer's disk blocks by state. foyer says how much of its disk tier holds data only
/// through its metrics registry (mixtrics): `FoyerMetrics` keeps these gauges and drops
/// every other foyer metric.
#[derive(Debug, Default)]
pub(super) struct BlockGauges {
    pub(super) writing: AtomicU64,
    pub(super) evictable: AtomicU64,
}

#[derive(Debug)]
pub(super) struct FoyerMetrics(pub(super) Arc<BlockGauges>);

/// One of foyer's block gauges (`None`: a state we do not keep).
#[derive(Debug)]
pub(super) struct BlockGauge(Arc<BlockGauges>, Option<fn(&BlockGauges) -> &AtomicU64>);

impl mixtrics::metrics::GaugeOps for BlockGauge {
    fn increase(&self, val: u64) {
        if let Some(f) = self.1 {
            f(&self.0).fetch_add(val, Ordering::Relaxed);
        }
    }

    fn decrease(&self, val: u64) {
        if let Some(f) = self.1 {
            let _ = f(&self.0).fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(val))
            });
        }
    }

    fn absolute(&self, val: u64) {
        if let Some(f) = self.1 {
            f(&self.0).store(val, Ordering::Relaxed);
        }
    }
}

#[derive(Debug)]
pub(super) struct BlockGaugeVec(Arc<BlockGauges>);

impl mixtrics::metrics::GaugeVecOps for BlockGaugeVec {
    fn gauge(&self, labels: &[std::borrow::Cow<'static, str>]) -> mixtrics::metrics::BoxedGauge {
        // Labels: [cache name, block state].
        let pick: Option<fn(&BlockGauges) -> &AtomicU64> = match labels.get(1).map(|l| l.as_ref()) {
            Some("writing") => Some(|g| &g.writing),
            Some("evictable") => Some(|g| &g.evictable),
            _ => None,
        };
        Box::new(BlockGauge(self.0.clone(), pick))
    }
}

impl mixtrics::metrics::RegistryOps for FoyerMetrics {
    fn register_counter_vec(
        &self,
        name: std::borrow::Cow<'static, str>,
        desc: std::borrow::Cow<'static, str>,
        label_names: &'static [&'static str],
    ) -> mixtrics::metrics::BoxedCounterVec {
        mixtrics::registry::noop::NoopMetricsRegistry.register_counter_vec(name, desc, label_names)
    }

    fn register_gauge_vec(
        &self,
        name: std::borrow::Cow<'static, str>,
        desc: std::borrow::Cow<'static, str>,
        label_names: &'static [&'static str],
    ) -> mixtrics::metrics::BoxedGaugeVec {
        if name == "foyer_storage_block_engine_block" {
            Box::new(BlockGaugeVec(self.0.clone()))
        } else {
            mixtrics::registry::noop::NoopMetricsRegistry.register_gauge_vec(
                name,
                desc,
                label_names,
            )
        }
    }

    fn register_histogram_vec(
        &self,
        name: std::borrow::Cow<'static, str>,
        desc: std::borrow::Cow<'static, str>,
        label_names: &'static [&'static str],
    ) -> mixtrics::metrics::BoxedHistogramVec {
        mixtrics::registry::noop::NoopMetricsRegistry.register_histogram_vec(
            name,
            desc,
            label_names,
        )
    }

    fn register_histogram_vec_with_buckets(
        &self,
        name: std::borrow::Cow<'static, str>,
        desc: std::borrow::Cow<'static, str>,
        label_names: &'static [&'static str],
        buckets: Vec<f64>,
    ) -> mixtrics::metrics::BoxedHistogramVec {
        mixtrics::registry::noop::NoopMetricsRegistry.register_histogram_vec_with_buckets(
            name,
            desc,
            label_names,
            buckets,
        )
    }
}
