package io.tickflow.flink;

import java.io.ByteArrayOutputStream;
import java.nio.charset.StandardCharsets;

/** Test helper: builds sink blobs v1. */
final class Blobs {

    private final ByteArrayOutputStream out = new ByteArrayOutputStream();

    Blobs() {
        out.write(SinkBlob.VERSION);
    }

    Blobs section(int kind, String name, long count, byte[] payload) {
        byte[] n = name.getBytes(StandardCharsets.UTF_8);
        out.write(kind);
        u16(n.length);
        out.writeBytes(n);
        u32(count);
        u32(payload.length);
        out.writeBytes(payload);
        return this;
    }

    Blobs records(String name, String... records) {
        ByteArrayOutputStream payload = new ByteArrayOutputStream();
        for (String r : records) {
            byte[] b = r.getBytes(StandardCharsets.UTF_8);
            int n = b.length;
            payload.write(n & 0xFF);
            payload.write(n >>> 8 & 0xFF);
            payload.write(n >>> 16 & 0xFF);
            payload.write(n >>> 24 & 0xFF);
            payload.writeBytes(b);
        }
        return section(SinkBlob.KAFKA_RECORDS, name, records.length, payload.toByteArray());
    }

    Blobs rows(String table, long count, byte[] rowBinary) {
        return section(SinkBlob.CLICKHOUSE_ROWS, table, count, rowBinary);
    }

    byte[] bytes() {
        return out.toByteArray();
    }

    private void u16(int v) {
        out.write(v & 0xFF);
        out.write(v >>> 8 & 0xFF);
    }

    private void u32(long v) {
        for (int i = 0; i < 4; i++) {
            out.write((int) (v >>> (8 * i) & 0xFF));
        }
    }
}
