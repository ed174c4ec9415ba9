package io.tickflow.flink;

import java.io.ByteArrayOutputStream;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;

/** Test helpers: envelope-like values and a reader of frame bundles. */
final class Bundles {

    private Bundles() {}

    record Frame(long timestamp, byte[] value) {}

    record Decoded(int version, int flags, List<Frame> frames) {
        boolean persist() {
            return (flags & FrameBundle.PERSIST) != 0;
        }
    }

    /** An Avro string (zig-zag varint length + UTF-8) followed by some other bytes. */
    static byte[] envelope(String instrument, String rest) {
        return withInstrumentBytes(instrument.getBytes(StandardCharsets.UTF_8), rest);
    }

    static byte[] withInstrumentBytes(byte[] instrument, String rest) {
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        writeLong(out, instrument.length);
        out.writeBytes(instrument);
        out.writeBytes(rest.getBytes(StandardCharsets.UTF_8));
        return out.toByteArray();
    }

    static void writeLong(ByteArrayOutputStream out, long value) {
        long n = (value << 1) ^ (value >> 63);
        while ((n & ~0x7FL) != 0) {
            out.write((int) ((n & 0x7F) | 0x80));
            n >>>= 7;
        }
        out.write((int) n);
    }

    static Decoded decode(byte[] bundle) {
        ByteBuffer buf = ByteBuffer.wrap(bundle).order(ByteOrder.LITTLE_ENDIAN);
        int version = buf.get() & 0xFF;
        int flags = buf.get() & 0xFF;
        List<Frame> frames = new ArrayList<>();
        while (buf.hasRemaining()) {
            long ts = buf.getLong();
            int length = buf.getInt();
            byte[] value = new byte[length];
            buf.get(value);
            frames.add(new Frame(ts, value));
        }
        return new Decoded(version, flags, frames);
    }
}
