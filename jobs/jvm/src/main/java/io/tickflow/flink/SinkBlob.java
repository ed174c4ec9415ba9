package io.tickflow.flink;

import java.nio.charset.StandardCharsets;

/**
 * Reader of a "sink blob v1", the Python operator's output for one bundle (little-endian):
 * {@code u8 version = 1}, then sections until the end: {@code u8 kind}, {@code u16 name_len},
 * {@code name} (UTF-8), {@code u32 count}, {@code u32 payload_len}, {@code payload}.
 *
 * <ul>
 *   <li>{@link #CLICKHOUSE_ROWS}: name = table, count = rows, payload = RowBinary rows in the
 *       table's insert column order.
 *   <li>{@link #KAFKA_RECORDS}: name = logical output ("nbbo", "deadletter", ...), count =
 *       records, payload = repeated {@code u32 len} + UTF-8 JSON text.
 * </ul>
 */
public final class SinkBlob {

    public static final int VERSION = 1;
    public static final int CLICKHOUSE_ROWS = 1;
    public static final int KAFKA_RECORDS = 2;

    private SinkBlob() {}

    /** One section of a blob; offsets index the blob it came from. */
    public interface SectionVisitor {
        void section(
                int kind,
                byte[] blob,
                int nameOffset,
                int nameLength,
                long count,
                int payloadOffset,
                int payloadLength)
                throws Exception;
    }

    /** Calls the visitor for each section in order; throws on a malformed blob. */
    public static void forEachSection(byte[] blob, SectionVisitor visitor) throws Exception {
        if (blob == null || blob.length == 0) {
            throw malformed(blob, 0, "empty");
        }
        if ((blob[0] & 0xFF) != VERSION) {
            throw malformed(blob, 0, "version " + (blob[0] & 0xFF) + ", expected " + VERSION);
        }
        int pos = 1;
        while (pos < blob.length) {
            int start = pos;
            if (blob.length - pos < 3) {
                throw malformed(blob, start, "truncated section header");
            }
            int kind = blob[pos] & 0xFF;
            int nameLength = u16(blob, pos + 1);
            pos += 3;
            if (blob.length - pos < (long) nameLength + 8) {
                throw malformed(blob, start, "truncated section name or counts");
            }
            int nameOffset = pos;
            pos += nameLength;
            long count = u32(blob, pos);
            long payloadLength = u32(blob, pos + 4);
            pos += 8;
            if (payloadLength > blob.length - pos) {
                throw malformed(
                        blob,
                        start,
                        "payload of " + payloadLength + " bytes, " + (blob.length - pos) + " left");
            }
            visitor.section(kind, blob, nameOffset, nameLength, count, pos, (int) payloadLength);
            pos += (int) payloadLength;
        }
    }

    static String name(byte[] blob, int nameOffset, int nameLength) {
        return new String(blob, nameOffset, nameLength, StandardCharsets.UTF_8);
    }

    static int u16(byte[] b, int pos) {
        return (b[pos] & 0xFF) | (b[pos + 1] & 0xFF) << 8;
    }

    static long u32(byte[] b, int pos) {
        return ((long) (b[pos] & 0xFF))
                | (long) (b[pos + 1] & 0xFF) << 8
                | (long) (b[pos + 2] & 0xFF) << 16
                | (long) (b[pos + 3] & 0xFF) << 24;
    }

    static IllegalArgumentException malformed(byte[] blob, int offset, String what) {
        int length = blob == null ? 0 : blob.length;
        return new IllegalArgumentException(
                "malformed sink blob (" + length + " bytes) at offset " + offset + ": " + what);
    }
}
