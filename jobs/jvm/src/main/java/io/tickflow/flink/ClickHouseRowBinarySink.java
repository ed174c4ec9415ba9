package io.tickflow.flink;

import org.apache.flink.api.connector.sink2.Sink;
import org.apache.flink.api.connector.sink2.StatefulSinkWriter;
import org.apache.flink.api.connector.sink2.SupportsWriterState;
import org.apache.flink.api.connector.sink2.WriterInitContext;
import org.apache.flink.core.io.SimpleVersionedSerializer;

import java.io.IOException;
import java.time.Duration;
import java.util.Collection;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

/**
 * Inserts the ClickHouse sections of the Python operator's sink blobs (RowBinary rows, see
 * {@link SinkBlob}) over ClickHouse's HTTP interface, one buffer per table.
 *
 * <p>A table is inserted when it holds {@code maxRows} rows, every {@code flushIntervalMs} and
 * before every checkpoint barrier; inserts still running at a checkpoint are in its state and
 * sent again on restore: at-least-once, and the tables are ReplacingMergeTree with
 * deterministic row identities, so a repeat after a restore is harmless. An insert ClickHouse
 * cannot take now (down, paused, timing out, a transient 5xx) is retried with backoff while new
 * rows queue behind it, up to a byte budget, and the job goes on; only a full budget
 * backpressures it. A refused insert (bad data, unknown table) fails the job (it restarts from
 * its checkpoint). See {@link ClickHouseRowBinaryWriter}.
 */
public class ClickHouseRowBinarySink
        implements Sink<byte[]>, SupportsWriterState<byte[], PendingInsert> {

    private static final long serialVersionUID = 1L;

    private final String baseUrl;
    private final String database;
    private final String user;
    private final String password;
    private final HashMap<String, String> columns;
    private final int maxRows;
    private final long flushIntervalMs;
    private final long connectTimeoutMs;
    private final long requestTimeoutMs;
    private final long maxPendingBytes;
    private final long retryMaxMs;

    /**
     * @param baseUrl the HTTP interface, e.g. {@code http://127.0.0.1:8123}
     * @param columns table to its insert columns, comma-separated, in RowBinary order
     * @param maxRows a table is inserted when it holds this many rows
     * @param flushIntervalMs longest rows wait between checkpoints
     */
    public ClickHouseRowBinarySink(
            String baseUrl,
            String database,
            String user,
            String password,
            Map<String, String> columns,
            int maxRows,
            long flushIntervalMs) {
        this(baseUrl, database, user, password, columns, maxRows, flushIntervalMs,
                ClickHouseHttp.DEFAULT_CONNECT_TIMEOUT.toMillis(), ClickHouseHttp.DEFAULT_REQUEST_TIMEOUT.toMillis(),
                ClickHouseRowBinaryWriter.DEFAULT_MAX_PENDING_BYTES, 10_000);
    }

    /**
     * @param connectTimeoutMs longest a connection to ClickHouse may take to open
     * @param requestTimeoutMs longest an insert may wait for its answer (then it is retried)
     * @param maxPendingBytes rows waiting for ClickHouse before the sink backpressures the job
     * @param retryMaxMs longest wait between two attempts of an insert ClickHouse could not take
     */
    public ClickHouseRowBinarySink(
            String baseUrl,
            String database,
            String user,
            String password,
            Map<String, String> columns,
            int maxRows,
            long flushIntervalMs,
            long connectTimeoutMs,
            long requestTimeoutMs,
            long maxPendingBytes,
            long retryMaxMs) {
        if (connectTimeoutMs < 1 || requestTimeoutMs < 1 || maxPendingBytes < 1 || retryMaxMs < 1) {
            throw new IllegalArgumentException("ClickHouse timeouts, budget and backoff must be positive: "
                    + connectTimeoutMs + ", " + requestTimeoutMs + ", " + maxPendingBytes + ", " + retryMaxMs);
        }
        this.connectTimeoutMs = connectTimeoutMs;
        this.requestTimeoutMs = requestTimeoutMs;
        this.maxPendingBytes = maxPendingBytes;
        this.retryMaxMs = retryMaxMs;
        if (maxRows < 1 || flushIntervalMs < 1) {
            throw new IllegalArgumentException(
                    "maxRows and flushIntervalMs must be positive: " + maxRows + ", " + flushIntervalMs);
        }
        this.baseUrl = baseUrl.endsWith("/") ? baseUrl.substring(0, baseUrl.length() - 1) : baseUrl;
        this.database = database;
        this.user = user;
        this.password = password;
        this.columns = new HashMap<>(columns);
        this.maxRows = maxRows;
        this.flushIntervalMs = flushIntervalMs;
    }

    @Override
    public StatefulSinkWriter<byte[], PendingInsert> createWriter(WriterInitContext context)
            throws IOException {
        return restoreWriter(context, List.of());
    }

    @Override
    public StatefulSinkWriter<byte[], PendingInsert> restoreWriter(
            WriterInitContext context, Collection<PendingInsert> pending) throws IOException {
        ClickHouseHttp http = new ClickHouseHttp(baseUrl, user, password,
                Duration.ofMillis(connectTimeoutMs), Duration.ofMillis(requestTimeoutMs));
        ClickHouseRowBinaryWriter writer = new ClickHouseRowBinaryWriter(
                http, database, columns, maxRows, flushIntervalMs, context.getProcessingTimeService(),
                context.metricGroup(), null, maxPendingBytes, Math.min(200, retryMaxMs), retryMaxMs);
        try {
            writer.restore(pending);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new IOException("interrupted while restoring ClickHouse inserts", e);
        }
        return writer;
    }

    @Override
    public SimpleVersionedSerializer<PendingInsert> getWriterStateSerializer() {
        return new PendingInsert.Serializer();
    }

    @Override
    public String toString() {
        return "ClickHouseRowBinarySink{" + baseUrl + "/" + database + ", tables=" + columns.keySet() + "}";
    }
}
