package io.tickflow.flink;

import org.apache.flink.api.common.operators.ProcessingTimeService;
import org.apache.flink.api.connector.sink2.StatefulSinkWriter;
import org.apache.flink.metrics.Counter;
import org.apache.flink.metrics.Gauge;
import org.apache.flink.metrics.groups.SinkWriterMetricGroup;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

import java.io.IOException;
import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collection;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.Executor;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.atomic.AtomicLong;

/**
 * The writer of {@link ClickHouseRowBinarySink}: one RowBinary buffer per table, inserted by a
 * thread of its own so that the task thread keeps reading while ClickHouse takes an insert
 * (on 18.16 an insert of a few thousand rows takes tens of milliseconds, and a blocked sink
 * backpressures the books operator).
 *
 * <p>A checkpoint does not wait for ClickHouse: before the barrier every buffered row is handed
 * to the inserter, and the inserts not yet known to be done are the writer's checkpointed state
 * ({@link PendingInsert}), sent again by a writer restored from it. Waiting for them at the
 * barrier instead held the whole job (the books operator behind it) for as long as ClickHouse
 * took, seconds on a busy box. An insert done before the failure and sent again on restore is
 * harmless: the rows keep their identities (ReplacingMergeTree; read with FINAL). At the end
 * of input the flush waits for every insert.
 *
 * <p>A ClickHouse outage does not stop the job: an insert ClickHouse cannot take now
 * ({@link ClickHouseHttp.Unavailable}: refused or reset connections, no answer within the
 * request timeout, a transient HTTP 5xx) is sent again, in order, with a backoff doubling from
 * {@code retryInitialMs} to {@code retryMaxMs}, for as long as it takes. Meanwhile new rows
 * queue behind it, in the checkpointed state, and the books operator goes on (Redis keeps
 * live books). Only when the queued rows reach {@code maxPendingBytes} does the writer wait
 * for the oldest insert, which backpressures the job (logged; metric
 * {@code clickhouseBudgetWaits}). A timed-out insert that ClickHouse did apply is applied
 * twice, harmlessly, like a replay. An insert ClickHouse refuses (bad data, unknown table or
 * column, no access) still fails the job: sending it again cannot help, and the core keeps
 * rows that do not fit their columns out of the sink (dead letters).
 */
class ClickHouseRowBinaryWriter implements StatefulSinkWriter<byte[], PendingInsert> {

    private static final Logger LOG = LoggerFactory.getLogger(ClickHouseRowBinaryWriter.class);

    /** Inserts queued or running before a new one waits for the oldest (a safety bound: the
     *  byte budget is the one that matters; a two-minute outage queues ~400 inserts). */
    static final int MAX_IN_FLIGHT = 4096;

    /** Default budget of rows queued or being inserted before a new insert waits. */
    static final long DEFAULT_MAX_PENDING_BYTES = 128L << 20;

    /** While ClickHouse stays unavailable, one log line per this many milliseconds. */
    static final long LOG_EVERY_MS = 30_000;

    private static final class TableBuffer {
        final String columns;
        byte[] data = new byte[64 * 1024];
        int size;
        long rows;

        TableBuffer(String columns) {
            this.columns = columns;
        }

        void append(byte[] src, int offset, int length, long count) {
            long needed = (long) size + length;
            if (needed > Integer.MAX_VALUE - 16) {
                throw new IllegalStateException("ClickHouse buffer over 2 GiB");
            }
            if (needed > data.length) {
                data = Arrays.copyOf(data, (int) Math.max(needed, Math.min(2L * data.length, Integer.MAX_VALUE - 16)));
            }
            System.arraycopy(src, offset, data, size, length);
            size += length;
            rows += count;
        }

        /** The rows so far, exactly sized; the buffer starts over (keeping its memory). */
        byte[] take() {
            byte[] rowsData = Arrays.copyOf(data, size);
            size = 0;
            rows = 0;
            if (data.length > (16 << 20)) {
                data = new byte[64 * 1024];
            }
            return rowsData;
        }
    }

    private record Insert(CompletableFuture<Void> done, PendingInsert rows) {}

    private final ClickHouseHttp http;
    private final String database;
    private final Map<String, String> columns;
    private final int maxRows;
    private final long flushIntervalMs;
    private final ProcessingTimeService timers;
    private final Executor inserter;
    private final ExecutorService ownInserter; // null when given one (tests)
    private final Map<String, TableBuffer> buffers = new LinkedHashMap<>();
    private final ArrayDeque<Insert> inFlight = new ArrayDeque<>();
    private final Counter rowsInserted;
    private final Counter inserts;
    private final Counter budgetWaits;
    private final long maxPendingBytes;
    private final long retryInitialMs;
    private final long retryMaxMs;
    private final AtomicLong retries = new AtomicLong();
    private volatile long unavailableSinceMs; // 0: the last insert went through
    private long lastUnavailableLogMs;
    private long lastBudgetLogMs;
    private long bufferedRows;
    private volatile long queuedBytes;
    private boolean timerPending;

    ClickHouseRowBinaryWriter(
            ClickHouseHttp http,
            String database,
            Map<String, String> columns,
            int maxRows,
            long flushIntervalMs,
            ProcessingTimeService timers,
            SinkWriterMetricGroup metrics) {
        this(http, database, columns, maxRows, flushIntervalMs, timers, metrics, null,
                DEFAULT_MAX_PENDING_BYTES, 200, 10_000);
    }

    /**
     * {@code inserter}: where inserts run; null: a daemon thread of this writer's own.
     * {@code maxPendingBytes}: rows queued or being inserted before the writer waits (and the
     * job with it); {@code retryInitialMs}, {@code retryMaxMs}: the backoff between attempts
     * of an insert ClickHouse could not take.
     */
    ClickHouseRowBinaryWriter(
            ClickHouseHttp http,
            String database,
            Map<String, String> columns,
            int maxRows,
            long flushIntervalMs,
            ProcessingTimeService timers,
            SinkWriterMetricGroup metrics,
            Executor inserter,
            long maxPendingBytes,
            long retryInitialMs,
            long retryMaxMs) {
        if (maxPendingBytes < 1 || retryInitialMs < 0 || retryMaxMs < retryInitialMs) {
            throw new IllegalArgumentException("bad ClickHouse writer bounds: " + maxPendingBytes + " bytes, "
                    + retryInitialMs + ".." + retryMaxMs + " ms");
        }
        this.maxPendingBytes = maxPendingBytes;
        this.retryInitialMs = retryInitialMs;
        this.retryMaxMs = retryMaxMs;
        this.http = http;
        this.database = database;
        this.columns = new HashMap<>(columns);
        this.maxRows = maxRows;
        this.flushIntervalMs = flushIntervalMs;
        this.timers = timers;
        if (inserter == null) {
            this.ownInserter = Executors.newSingleThreadExecutor(task -> {
                Thread thread = new Thread(task, "clickhouse-inserts " + database);
                thread.setDaemon(true);
                return thread;
            });
            this.inserter = ownInserter;
        } else {
            this.ownInserter = null;
            this.inserter = inserter;
        }
        this.rowsInserted = metrics == null ? null : metrics.counter("clickhouseRows");
        this.inserts = metrics == null ? null : metrics.counter("clickhouseInserts");
        this.budgetWaits = metrics == null ? null : metrics.counter("clickhouseBudgetWaits");
        if (metrics != null) {
            metrics.gauge("clickhouseInsertRetries", (Gauge<Long>) retries::get);
            metrics.gauge("clickhousePendingBytes", (Gauge<Long>) () -> queuedBytes);
            metrics.gauge("clickhouseUnavailable", (Gauge<Integer>) () -> unavailableSinceMs == 0 ? 0 : 1);
        }
    }

    /** Sends again the inserts a checkpoint held (in their order), before any new row. */
    void restore(Collection<PendingInsert> pending) throws IOException, InterruptedException {
        for (PendingInsert insert : pending) {
            submit(insert);
        }
    }

    @Override
    public void write(byte[] blob, Context context) throws IOException, InterruptedException {
        try {
            SinkBlob.forEachSection(blob, this::section);
        } catch (IOException | InterruptedException | RuntimeException e) {
            throw e;
        } catch (Exception e) {
            throw new IOException(e);
        }
    }

    private void section(
            int kind, byte[] blob, int nameOffset, int nameLength, long count, int payloadOffset, int payloadLength)
            throws IOException, InterruptedException {
        if (kind != SinkBlob.CLICKHOUSE_ROWS || count == 0) {
            return;
        }
        String table = SinkBlob.name(blob, nameOffset, nameLength);
        TableBuffer buffer = buffers.get(table);
        if (buffer == null) {
            String cols = columns.get(table);
            if (cols == null) {
                throw new IllegalArgumentException(
                        "sink blob has rows for table '" + table + "', which has no insert columns "
                                + "(known: " + columns.keySet() + ")");
            }
            buffer = new TableBuffer(cols);
            buffers.put(table, buffer);
        }
        buffer.append(blob, payloadOffset, payloadLength, count);
        bufferedRows += count;
        if (buffer.rows >= maxRows) {
            insert(table, buffer);
        } else if (!timerPending && timers != null) {
            timerPending = true;
            timers.registerTimer(timers.getCurrentProcessingTime() + flushIntervalMs, this::onTimer);
        }
    }

    private void onTimer(long time) throws IOException, InterruptedException {
        timerPending = false;
        insertAll();
    }

    /**
     * Before a barrier: every buffered row goes to the inserter, without waiting for it (the
     * inserts still running are the checkpoint's state). At the end of input: waits for all.
     */
    @Override
    public void flush(boolean endOfInput) throws IOException, InterruptedException {
        insertAll();
        reapDone(); // a failed insert fails the checkpoint, not a later one
        if (endOfInput) {
            while (!inFlight.isEmpty()) {
                awaitOldest();
            }
        }
    }

    /** The inserts not yet known to be done, oldest first (a failed one fails the snapshot). */
    @Override
    public List<PendingInsert> snapshotState(long checkpointId) throws IOException {
        try {
            reapDone();
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new IOException("interrupted while checking ClickHouse inserts", e);
        }
        List<PendingInsert> pending = new ArrayList<>(inFlight.size());
        for (Insert insert : inFlight) {
            pending.add(insert.rows());
        }
        return pending;
    }

    private void insertAll() throws IOException, InterruptedException {
        if (bufferedRows == 0) {
            return;
        }
        for (Map.Entry<String, TableBuffer> entry : buffers.entrySet()) {
            if (entry.getValue().rows > 0) {
                insert(entry.getKey(), entry.getValue());
            }
        }
    }

    /** Hands the table's rows to the inserter. */
    private void insert(String table, TableBuffer buffer) throws IOException, InterruptedException {
        long rows = buffer.rows;
        String cols = buffer.columns;
        byte[] data = buffer.take();
        bufferedRows -= rows;
        submit(new PendingInsert(table, cols, data, rows));
    }

    /**
     * Queues an insert; waits first for the oldest while too many are queued or the queued
     * rows would exceed the budget (the job is then backpressured: logged and counted).
     */
    private void submit(PendingInsert insert) throws IOException, InterruptedException {
        reapDone();
        int length = insert.data().length;
        boolean counted = false;
        while (!inFlight.isEmpty()
                && (inFlight.size() >= MAX_IN_FLIGHT || queuedBytes + length > maxPendingBytes)) {
            if (!counted) {
                counted = true;
                if (budgetWaits != null) {
                    budgetWaits.inc();
                }
                long now = System.currentTimeMillis();
                if (now - lastBudgetLogMs >= LOG_EVERY_MS) {
                    lastBudgetLogMs = now;
                    LOG.warn("{} bytes of ClickHouse rows ({} inserts) waiting, the budget of {} bytes "
                            + "is full: the job waits for ClickHouse (unavailable: {})", queuedBytes,
                            inFlight.size(), maxPendingBytes, unavailableSinceMs != 0);
                }
            }
            awaitOldest();
        }
        CompletableFuture<Void> done = CompletableFuture.runAsync(() -> {
            try {
                send(insert, length);
            } catch (IOException e) {
                throw new InsertFailed(e);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                throw new InsertFailed(new IOException("ClickHouse insert interrupted", e));
            }
        }, inserter);
        inFlight.addLast(new Insert(done, insert));
        queuedBytes += length;
        reapDone(); // an inserter that ran it at once (tests) reports its failure here
    }

    /** One insert, sent until ClickHouse takes it (or refuses it); runs on the inserter. */
    private void send(PendingInsert insert, int length) throws IOException, InterruptedException {
        long delay = retryInitialMs;
        while (true) {
            try {
                http.insert(database, insert.table(), insert.columns(), insert.data(), length, insert.rows());
            } catch (ClickHouseHttp.Unavailable e) {
                retries.incrementAndGet();
                long now = System.currentTimeMillis();
                if (unavailableSinceMs == 0) {
                    unavailableSinceMs = now;
                }
                if (now - lastUnavailableLogMs >= LOG_EVERY_MS) {
                    lastUnavailableLogMs = now;
                    LOG.warn("ClickHouse unavailable for {} ms, {} bytes of rows waiting (budget {}), "
                            + "retrying every {} ms at most: {}", now - unavailableSinceMs, queuedBytes,
                            maxPendingBytes, retryMaxMs, e.getMessage());
                }
                Thread.sleep(delay);
                delay = Math.min(retryMaxMs, Math.max(1, delay * 2));
                continue;
            }
            if (unavailableSinceMs != 0) {
                LOG.info("ClickHouse takes inserts again after {} ms unavailable ({} retries so far)",
                        System.currentTimeMillis() - unavailableSinceMs, retries.get());
                unavailableSinceMs = 0;
                lastUnavailableLogMs = 0;
            }
            return;
        }
    }

    private void reapDone() throws IOException, InterruptedException {
        while (!inFlight.isEmpty() && inFlight.peekFirst().done().isDone()) {
            awaitOldest();
        }
    }

    private void awaitOldest() throws IOException, InterruptedException {
        Insert oldest = inFlight.peekFirst();
        try {
            oldest.done().get();
        } catch (ExecutionException e) {
            inFlight.clear(); // the job fails and restarts from its checkpoint
            queuedBytes = 0;
            Throwable cause = e.getCause();
            if (cause instanceof InsertFailed failed) {
                throw failed.io;
            }
            throw new IOException("ClickHouse insert failed: " + cause, cause);
        }
        inFlight.removeFirst();
        queuedBytes -= oldest.rows().data().length;
        if (rowsInserted != null) {
            rowsInserted.inc(oldest.rows().rows());
            inserts.inc();
        }
    }

    /** Carries an insert's IOException out of the inserter. */
    private static final class InsertFailed extends RuntimeException {
        private static final long serialVersionUID = 1L;
        final transient IOException io;

        InsertFailed(IOException io) {
            super(io);
            this.io = io;
        }
    }

    /** Rows waiting for an insert (tests). */
    long bufferedRows() {
        return bufferedRows;
    }

    /** Attempts of inserts that ClickHouse could not take (tests). */
    long retries() {
        return retries.get();
    }

    /** Inserts handed to the inserter and not yet known to be done (tests). */
    int insertsInFlight() {
        return inFlight.size();
    }

    @Override
    public void close() {
        if (ownInserter != null) {
            ownInserter.shutdownNow();
        }
    }
}
