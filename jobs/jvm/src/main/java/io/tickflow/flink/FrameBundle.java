package io.tickflow.flink;

import java.lang.invoke.MethodHandles;
import java.lang.invoke.VarHandle;
import java.nio.ByteOrder;
import java.util.Arrays;

/**
 * A growing "frame bundle v1" (little-endian): {@code u8 version = 1}, {@code u8 flags} (bit 0 =
 * {@link #PERSIST}), then until the end repeated {@code i64 timestamp_ms} ({@link #NO_TIMESTAMP}
 * when the record had none), {@code u32 length}, {@code length} bytes (the raw Kafka value).
 *
 * <p>One per key in {@link FrameBundler}, reused after each emission.
 */
final class FrameBundle {

    static final byte VERSION = 1;
    /** Flag: the downstream operator writes its keyed state when it has handled this bundle. */
    static final byte PERSIST = 1;

    static final long NO_TIMESTAMP = Long.MIN_VALUE;
    static final int HEADER_BYTES = 2;
    static final int FRAME_HEADER_BYTES = 12;

    private static final int INITIAL_CAPACITY = 4096;
    /** A buffer grown beyond this by a burst of large frames is dropped after its emission. */
    private static final int RETAINED_CAPACITY = 1 << 20;

    private static final VarHandle LONG_LE =
            MethodHandles.byteArrayViewVarHandle(long[].class, ByteOrder.LITTLE_ENDIAN);
    private static final VarHandle INT_LE =
            MethodHandles.byteArrayViewVarHandle(int[].class, ByteOrder.LITTLE_ENDIAN);

    private byte[] buf = new byte[INITIAL_CAPACITY];
    private int size = HEADER_BYTES;
    private int frames;
    private long maxTimestamp = NO_TIMESTAMP;

    int frames() {
        return frames;
    }

    /** The largest frame timestamp, {@link #NO_TIMESTAMP} if no frame had one. */
    long maxTimestamp() {
        return maxTimestamp;
    }

    void append(long timestamp, byte[] value) {
        int length = value.length;
        ensureCapacity(size + FRAME_HEADER_BYTES + length);
        LONG_LE.set(buf, size, timestamp);
        INT_LE.set(buf, size + 8, length);
        System.arraycopy(value, 0, buf, size + FRAME_HEADER_BYTES, length);
        size += FRAME_HEADER_BYTES + length;
        frames++;
        if (timestamp > maxTimestamp) {
            maxTimestamp = timestamp;
        }
    }

    /** The bundle's bytes with the given flags; the buffer is empty afterwards. */
    byte[] drain(byte flags) {
        byte[] out = Arrays.copyOf(buf, size);
        out[0] = VERSION;
        out[1] = flags;
        size = HEADER_BYTES;
        frames = 0;
        maxTimestamp = NO_TIMESTAMP;
        if (buf.length > RETAINED_CAPACITY) {
            buf = new byte[INITIAL_CAPACITY];
        }
        return out;
    }

    /** A bundle without frames (a checkpoint's persist marker for a key). */
    static byte[] empty(byte flags) {
        return new byte[] {VERSION, flags};
    }

    private void ensureCapacity(long needed) {
        if (needed > Integer.MAX_VALUE - 16) {
            throw new IllegalStateException("frame bundle over 2 GiB");
        }
        if (needed > buf.length) {
            buf = Arrays.copyOf(buf, (int) Math.max(needed, Math.min(2L * buf.length, Integer.MAX_VALUE - 16)));
        }
    }
}
