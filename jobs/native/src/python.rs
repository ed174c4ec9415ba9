//! The Python face of the batch engine: `tickflow_native.NativePartition`, used by
//! `jobs/backfill.py` (Kafka and ClickHouse stay in Python; every frame's work is here).

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};

use crate::dec::parse_dec;
use crate::instrument::Rules;
use crate::partition::{PartitionBooks, Selection};
use crate::rows::TABLES;

#[pyclass(module = "tickflow_native", unsendable)]
struct NativePartition {
    inner: PartitionBooks,
}

#[pymethods]
impl NativePartition {
    #[new]
    #[pyo3(signature = (*, top_n, snapshot_interval_ms, max_levels, max_buffered,
        nbbo_stale_after_ms, bar_intervals_ms, depth_band_bps, trade_dedup_ms,
        quote_equivalents, out_of_orderness_ms, only, others))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        top_n: usize,
        snapshot_interval_ms: i64,
        max_levels: usize,
        max_buffered: usize,
        nbbo_stale_after_ms: i64,
        bar_intervals_ms: Vec<i64>,
        depth_band_bps: &str,
        trade_dedup_ms: i64,
        quote_equivalents: Vec<(String, String)>,
        out_of_orderness_ms: i64,
        only: Vec<String>,
        others: Vec<String>,
    ) -> PyResult<Self> {
        if snapshot_interval_ms <= 0 {
            return Err(PyValueError::new_err("snapshot_interval_ms must be > 0"));
        }
        let depth_band_bps = parse_dec(depth_band_bps)
            .ok_or_else(|| PyValueError::new_err(format!("depth_band_bps {depth_band_bps:?} is not a decimal")))?;
        let rules = Rules {
            top_n,
            snapshot_interval_ms,
            max_levels,
            max_buffered,
            nbbo_stale_after_ms,
            bar_intervals_ms,
            depth_band_bps,
            trade_dedup_ms,
        };
        let selection = Selection { only, others };
        Ok(NativePartition {
            inner: PartitionBooks::new(rules, quote_equivalents, out_of_orderness_ms, selection),
        })
    }

    /// Records in offset order: their values (bytes) and Kafka timestamps (ms).
    fn feed_batch(&mut self, values: &Bound<'_, PyList>, timestamps: Vec<i64>) -> PyResult<()> {
        if values.len() != timestamps.len() {
            return Err(PyValueError::new_err("values and timestamps must be parallel"));
        }
        for (value, timestamp) in values.iter().zip(timestamps) {
            let value = value.downcast::<PyBytes>()?;
            self.inner.feed(value.as_bytes(), timestamp);
        }
        Ok(())
    }

    /// The input ended: close what the last watermark makes final.
    fn finish(&mut self) {
        self.inner.finish();
    }

    /// `(table, RowBinary bytes, rows)` of each table holding at least `min_rows` rows (all
    /// non-empty ones with 0); taken, so the next call returns only newer rows.
    fn take_tables<'py>(&mut self, py: Python<'py>, min_rows: u64) -> Vec<(&'static str, Bound<'py, PyBytes>, u64)> {
        let mut taken = Vec::new();
        for (table, rows) in TABLES.iter().zip(self.inner.tables.iter_mut()) {
            if rows.rows > 0 && rows.rows >= min_rows {
                taken.push((*table, PyBytes::new(py, &rows.data), rows.rows));
                rows.data.clear();
                rows.rows = 0;
            }
        }
        taken
    }

    /// `(reason, record bytes, envelope decoded)` of each record to dead-letter; taken.
    fn take_dead_letters<'py>(&mut self, py: Python<'py>) -> Vec<(String, Bound<'py, PyBytes>, bool)> {
        self.inner
            .dead_letters
            .drain(..)
            .map(|d| (d.reason, PyBytes::new(py, &d.value), d.envelope_ok))
            .collect()
    }

    /// frames, dead_letters, rows, late, duplicate_trades so far.
    fn counts<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let c = &self.inner.counts;
        let d = PyDict::new(py);
        d.set_item("frames", c.frames)?;
        d.set_item("dead_letters", c.dead_letters)?;
        d.set_item("rows", c.rows)?;
        d.set_item("late", c.late)?;
        d.set_item("duplicate_trades", c.duplicate_trades)?;
        Ok(d)
    }

    #[getter]
    fn watermark_ms(&self) -> i64 {
        self.inner.watermark_ms
    }
}

#[pymodule]
fn tickflow_native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<NativePartition>()?;
    m.add("TABLES", TABLES.to_vec())?;
    Ok(())
}
