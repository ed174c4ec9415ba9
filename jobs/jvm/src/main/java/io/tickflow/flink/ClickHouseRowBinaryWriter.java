package io.tickflow.flink;

import org.apache.flink.api.common.operators.ProcessingTimeService;
import org.apache.flink.api.connector.sink2.SinkWriter;
import org.apache.flink.metrics.Counter;
import org.apache.flink.metrics.groups.SinkWriterMetricGroup;

import java.io.IOException;
import java.util.Arrays;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.Map;

/** The writer of {@link ClickHouseRowBinarySink}: one RowBinary buffer per table. */
class ClickHouseRowBinaryWriter implements SinkWriter<byte[]> {

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
    }

    private final ClickHouseHttp http;
    private final String database;
    private final Map<String, String> columns;
    private final int maxRows;
    private final long flushIntervalMs;
    private final ProcessingTimeService timers;
    private final Map<String, TableBuffer> buffers = new LinkedHashMap<>();
    private final Counter rowsInserted;
    private final Counter inserts;
    private long bufferedRows;
    private boolean timerPending;

    ClickHouseRowBinaryWriter(
            ClickHouseHttp http,
            String database,
            Map<String, String> columns,
            int maxRows,
            long flushIntervalMs,
            ProcessingTimeService timers,
            SinkWriterMetricGroup metrics) {
        this.http = http;
        this.database = database;
        this.columns = new HashMap<>(columns);
        this.maxRows = maxRows;
        this.flushIntervalMs = flushIntervalMs;
        this.timers = timers;
        this.rowsInserted = metrics == null ? null : metrics.counter("clickhouseRows");
        this.inserts = metrics == null ? null : metrics.counter("clickhouseInserts");
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
        flushAll();
    }

    @Override
    public void flush(boolean endOfInput) throws IOException, InterruptedException {
        flushAll();
    }

    private void flushAll() throws IOException, InterruptedException {
        if (bufferedRows == 0) {
            return;
        }
        for (Map.Entry<String, TableBuffer> entry : buffers.entrySet()) {
            if (entry.getValue().rows > 0) {
                insert(entry.getKey(), entry.getValue());
            }
        }
    }

    private void insert(String table, TableBuffer buffer) throws IOException, InterruptedException {
        http.insert(database, table, buffer.columns, buffer.data, buffer.size, buffer.rows);
        if (rowsInserted != null) {
            rowsInserted.inc(buffer.rows);
            inserts.inc();
        }
        bufferedRows -= buffer.rows;
        buffer.rows = 0;
        buffer.size = 0;
        if (buffer.data.length > (16 << 20)) {
            buffer.data = new byte[64 * 1024];
        }
    }

    /** Rows waiting for an insert (tests). */
    long bufferedRows() {
        return bufferedRows;
    }

    @Override
    public void close() {}
}
