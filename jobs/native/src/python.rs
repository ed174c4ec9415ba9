//! The Python face of the batch engine: `tickflow_native.NativePartition`, used by
//! `jobs/backfill.py` (Kafka and ClickHouse stay in Python; every frame's work is here).

use pyo3::create_exception;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};

use crate::dec::parse_dec;
use crate::instrument::Rules;
use crate::partition::{PartitionBooks, Selection};
use crate::rows::TABLES;
use crate::stream::{LiveRules, StreamBooks, OUTPUTS};
use crate::validate::Limits;
use crate::writer_schema;

#[pyclass(module = "tickflow_native", unsendable)]
struct NativePartition {
    inner: PartitionBooks,
}

#[pymethods]
impl NativePartition {
    #[new]
    #[pyo3(signature = (*, top_n, snapshot_interval_ms, max_levels, max_buffered,
        nbbo_stale_after_ms, bar_intervals_ms, depth_band_bps, trade_dedup_ms,
        quote_equivalents, out_of_orderness_ms, only, others,
        max_event_ahead_ms=None, max_event_behind_ms=None, write_rows=true))]
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
        max_event_ahead_ms: Option<i64>,
        max_event_behind_ms: Option<i64>,
        write_rows: bool,
    ) -> PyResult<Self> {
        let rules = rules(
            top_n,
            snapshot_interval_ms,
            max_levels,
            max_buffered,
            nbbo_stale_after_ms,
            bar_intervals_ms,
            depth_band_bps,
            trade_dedup_ms,
        )?;
        let selection = Selection { only, others };
        let mut inner =
            PartitionBooks::new(rules, quote_equivalents, out_of_orderness_ms, selection);
        inner.limits = Limits {
            max_event_ahead_ms,
            max_event_behind_ms,
        };
        inner.write_rows = write_rows;
        Ok(NativePartition { inner })
    }

    /// Stop applying one book at its first book event stamped later than `at_ms` (exchange
    /// time, epoch ms); call before feeding.
    fn hold_book(&mut self, exchange: &str, symbol: &str, at_ms: i64) {
        self.inner.hold_book(exchange, symbol, at_ms);
    }

    /// Whether the held book met its first event later than its cutoff (stop feeding).
    #[getter]
    fn halted(&self) -> bool {
        self.inner.halted()
    }

    /// One book's full state (as of the cutoff when one is set), or None before any of its
    /// book frames: a dict with status, reason, version, seq, event_time_ms,
    /// receive_time_ns, synced_ms, bids and asks (every level kept, best first, exact
    /// decimal strings; none unless LIVE), gap (its open interval) and halt (the first
    /// event after the cutoff).
    fn book<'py>(
        &self,
        py: Python<'py>,
        exchange: &str,
        symbol: &str,
    ) -> PyResult<Option<Bound<'py, PyDict>>> {
        let Some(book) = self.inner.book_at(exchange, symbol) else {
            return Ok(None);
        };
        let levels = |levels: &[crate::events::Level]| -> Vec<(String, String)> {
            levels
                .iter()
                .map(|(p, s)| (p.to_string(), s.to_string()))
                .collect()
        };
        let d = PyDict::new(py);
        d.set_item("status", book.status.as_str())?;
        d.set_item("reason", &book.reason)?;
        d.set_item("version", book.version)?;
        d.set_item("seq", book.seq)?;
        d.set_item("event_time_ms", book.event_time_ms)?;
        d.set_item("receive_time_ns", book.receive_time_ns)?;
        d.set_item("synced_ms", book.synced_ms)?;
        d.set_item("bids", levels(&book.bids))?;
        d.set_item("asks", levels(&book.asks))?;
        match &book.gap {
            Some(gap) => {
                let g = PyDict::new(py);
                g.set_item("start_ms", gap.start_ms)?;
                g.set_item("start_version", gap.start_version)?;
                g.set_item("kind", &gap.kind)?;
                g.set_item("reason", &gap.reason)?;
                g.set_item("seq_before", gap.seq_before)?;
                g.set_item("messages", gap.messages)?;
                g.set_item("dropped", gap.dropped)?;
                d.set_item("gap", g)?;
            }
            None => d.set_item("gap", py.None())?,
        }
        match &book.halt {
            Some(halt) => {
                let h = PyDict::new(py);
                h.set_item("event_time_ms", halt.event_time_ms)?;
                h.set_item("receive_time_ns", halt.receive_time_ns)?;
                h.set_item("snapshot", halt.snapshot)?;
                h.set_item("first_id", halt.first_id)?;
                h.set_item("last_id", halt.last_id)?;
                h.set_item("outcome", halt.outcome.map(|o| o.as_str()))?;
                d.set_item("halt", h)?;
            }
            None => d.set_item("halt", py.None())?,
        }
        Ok(Some(d))
    }

    /// Records in offset order: their values (bytes) and Kafka timestamps (ms). Raises
    /// UnknownWriterSchemas, having fed none, when a framed record names an id not learned.
    fn feed_batch(&mut self, values: &Bound<'_, PyList>, timestamps: Vec<i64>) -> PyResult<()> {
        if values.len() != timestamps.len() {
            return Err(PyValueError::new_err(
                "values and timestamps must be parallel",
            ));
        }
        let values = values
            .iter()
            .map(|value| value.downcast_into::<PyBytes>())
            .collect::<Result<Vec<_>, _>>()?;
        let unknown = writer_schema::unknown_ids(values.iter().map(|v| v.as_bytes()));
        if !unknown.is_empty() {
            return Err(UnknownWriterSchemas::new_err(unknown));
        }
        for (value, timestamp) in values.iter().zip(timestamps) {
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
    fn take_tables<'py>(
        &mut self,
        py: Python<'py>,
        min_rows: u64,
    ) -> Vec<(&'static str, Bound<'py, PyBytes>, u64)> {
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
    fn take_dead_letters<'py>(
        &mut self,
        py: Python<'py>,
    ) -> Vec<(String, Bound<'py, PyBytes>, bool)> {
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

/// The live job's core (one per operator instance): bundles of raw frames per instrument
/// in, one sink blob and conflated Redis writes out, each instrument's state as bytes.
#[pyclass(module = "tickflow_native", unsendable)]
struct NativeStream {
    inner: StreamBooks,
}

#[pymethods]
impl NativeStream {
    #[new]
    #[pyo3(signature = (*, top_n, snapshot_interval_ms, max_levels, max_buffered,
        nbbo_stale_after_ms, bar_intervals_ms, depth_band_bps, trade_dedup_ms,
        quote_equivalents, stale_after_ms, resync_retry_ms, redis_prefix,
        max_event_ahead_ms=None, max_event_behind_ms=None))]
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
        stale_after_ms: i64,
        resync_retry_ms: i64,
        redis_prefix: String,
        max_event_ahead_ms: Option<i64>,
        max_event_behind_ms: Option<i64>,
    ) -> PyResult<Self> {
        let rules = rules(
            top_n,
            snapshot_interval_ms,
            max_levels,
            max_buffered,
            nbbo_stale_after_ms,
            bar_intervals_ms,
            depth_band_bps,
            trade_dedup_ms,
        )?;
        let live = LiveRules {
            stale_after_ms,
            resync_retry_ms,
            redis_prefix,
        };
        let mut inner = StreamBooks::new(rules, live, quote_equivalents);
        inner.set_limits(Limits {
            max_event_ahead_ms,
            max_event_behind_ms,
        });
        Ok(NativeStream { inner })
    }

    /// Write these result outputs as framed Avro: `(output, registry id, schema JSON)` each.
    fn set_result_schemas(&mut self, schemas: Vec<(String, u32, String)>) -> PyResult<()> {
        self.inner
            .set_result_schemas(&schemas)
            .map_err(PyValueError::new_err)
    }

    fn has(&self, key: &str) -> bool {
        self.inner.has(key)
    }

    fn snapshot<'py>(&self, py: Python<'py>, key: &str) -> Option<Bound<'py, PyBytes>> {
        self.inner
            .snapshot(key)
            .map(|state| PyBytes::new(py, &state))
    }

    fn restore(&mut self, key: &str, state: &[u8]) -> PyResult<()> {
        self.inner
            .restore(key, state)
            .map_err(PyValueError::new_err)
    }

    /// One frame bundle of instrument `key`; True when the state must be persisted now.
    /// Raises UnknownWriterSchemas, having applied none of it, when a framed frame names an
    /// id not learned.
    fn process_bundle(
        &mut self,
        key: &str,
        bundle: &[u8],
        watermark_ms: i64,
        now_ms: i64,
    ) -> PyResult<bool> {
        let unknown =
            StreamBooks::unknown_writer_ids(bundle).map_err(|e| PyValueError::new_err(e.0))?;
        if !unknown.is_empty() {
            return Err(UnknownWriterSchemas::new_err(unknown));
        }
        self.inner
            .process_bundle(key, bundle, watermark_ms, now_ms)
            .map_err(|e| PyValueError::new_err(e.0))
    }

    fn advance(&mut self, key: &str, watermark_ms: i64) {
        self.inner.advance(key, watermark_ms)
    }

    fn next_event_time_ms(&self, key: &str) -> Option<i64> {
        self.inner.next_event_time_ms(key)
    }

    /// Staleness and resync retries by wall clock; the number of books not LIVE and whether
    /// the state changed.
    fn housekeeping(&mut self, key: &str, now_ms: i64) -> (usize, bool) {
        self.inner.housekeeping(key, now_ms)
    }

    fn books_not_live(&self, key: &str) -> usize {
        self.inner.books_not_live(key)
    }

    /// The sink blob of everything produced since the last call, or None.
    fn take_blob<'py>(&mut self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        self.inner.take_blob().map(|blob| PyBytes::new(py, &blob))
    }

    #[getter]
    fn redis_pending(&self) -> usize {
        self.inner.redis_pending()
    }

    /// `(is_nbbo, KEYS, ARGV)` of each queued guarded Redis write; taken.
    fn take_redis<'py>(
        &mut self,
        py: Python<'py>,
        publish_time_ns: i64,
    ) -> Vec<(bool, Vec<String>, Vec<Bound<'py, PyBytes>>)> {
        self.inner
            .take_redis(publish_time_ns)
            .into_iter()
            .map(|(nbbo, keys, args)| {
                (
                    nbbo,
                    keys,
                    args.iter().map(|a| PyBytes::new(py, a)).collect(),
                )
            })
            .collect()
    }

    /// Counts since the last call.
    fn take_counts<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let c = self.inner.take_counts();
        let d = PyDict::new(py);
        for (name, value) in [
            ("frames", c.frames),
            ("bundles", c.bundles),
            ("dead_letters", c.dead_letters),
            ("resync_requests", c.resync_requests),
            ("gaps", c.gaps),
            ("checksum_failures", c.checksum_failures),
            ("trades", c.trades),
            ("late_events", c.late),
            ("duplicate_trades", c.duplicate_trades),
            ("nbbo_updates", c.nbbo_updates),
            ("trades_matched", c.matched),
            ("bars", c.bars),
            ("book_updates", c.book_updates),
        ] {
            d.set_item(name, value)?;
        }
        Ok(d)
    }
}

#[allow(clippy::too_many_arguments)]
fn rules(
    top_n: usize,
    snapshot_interval_ms: i64,
    max_levels: usize,
    max_buffered: usize,
    nbbo_stale_after_ms: i64,
    bar_intervals_ms: Vec<i64>,
    depth_band_bps: &str,
    trade_dedup_ms: i64,
) -> PyResult<Rules> {
    if snapshot_interval_ms <= 0 {
        return Err(PyValueError::new_err("snapshot_interval_ms must be > 0"));
    }
    let depth_band_bps = parse_dec(depth_band_bps).ok_or_else(|| {
        PyValueError::new_err(format!(
            "depth_band_bps {depth_band_bps:?} is not a decimal"
        ))
    })?;
    Ok(Rules {
        top_n,
        snapshot_interval_ms,
        max_levels,
        max_buffered,
        nbbo_stale_after_ms,
        bar_intervals_ms,
        depth_band_bps,
        trade_dedup_ms,
    })
}

// A framed record names a writer schema id the core has not learned; args: the ids.
create_exception!(tickflow_native, UnknownWriterSchemas, PyValueError);

/// Learn the writer schema of a registry id (its JSON text; None: the registry has none):
/// None when its records can be read, else why not (they are dead-lettered with that reason).
#[pyfunction]
#[pyo3(signature = (schema_id, schema))]
fn learn_writer_schema(schema_id: u32, schema: Option<&str>) -> Option<String> {
    writer_schema::learn(schema_id, schema).err()
}

/// Whether a writer schema id has been learned.
#[pyfunction]
fn knows_writer_schema(schema_id: u32) -> bool {
    writer_schema::plans().contains_key(&schema_id)
}

#[pymodule]
fn tickflow_native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<NativePartition>()?;
    m.add_class::<NativeStream>()?;
    m.add(
        "UnknownWriterSchemas",
        m.py().get_type::<UnknownWriterSchemas>(),
    )?;
    m.add_function(wrap_pyfunction!(learn_writer_schema, m)?)?;
    m.add_function(wrap_pyfunction!(knows_writer_schema, m)?)?;
    m.add("TABLES", TABLES.to_vec())?;
    m.add("OUTPUTS", OUTPUTS.to_vec())?;
    Ok(())
}
