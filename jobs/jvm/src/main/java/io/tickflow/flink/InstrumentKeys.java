package io.tickflow.flink;

import java.nio.ByteBuffer;
import java.nio.CharBuffer;
import java.nio.charset.CharacterCodingException;
import java.nio.charset.CharsetDecoder;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;
import java.util.HashMap;
import java.util.Map;

/**
 * The NBBO group of a raw envelope, read from its first Avro field ({@code instrument}) without
 * decoding the record: the JVM twin of {@code schemas.codec.envelope_instrument} followed by
 * {@code tickflow.instruments.nbbo_group}.
 *
 * <p>Not thread-safe (one per operator instance): it reuses a strict UTF-8 decoder and caches
 * the group of each instrument seen (a few hundred at most).
 */
final class InstrumentKeys {

    /** The key of a value whose instrument cannot be read: the core dead-letters it. */
    static final String UNREADABLE = "";

    private static final int CACHE_LIMIT = 4096;
    /** A framed record's first byte (a schemaless one starts with a non-empty string's length). */
    private static final byte MAGIC = 0;
    /** The magic byte and the schema id. */
    private static final int FRAME_HEADER = 5;

    private final Map<String, String> equivalents;
    private final CharsetDecoder decoder =
            StandardCharsets.UTF_8
                    .newDecoder()
                    .onMalformedInput(CodingErrorAction.REPORT)
                    .onUnmappableCharacter(CodingErrorAction.REPORT);
    private final Map<String, String> groups = new HashMap<>();

    InstrumentKeys(Map<String, String> equivalents) {
        this.equivalents = Map.copyOf(equivalents);
    }

    /** The NBBO group of the envelope's instrument, {@link #UNREADABLE} if it has none. */
    String keyOf(byte[] value) {
        String instrument = instrument(value);
        if (instrument == null) {
            return UNREADABLE;
        }
        if (equivalents.isEmpty()) {
            return instrument;
        }
        String group = groups.get(instrument);
        if (group == null) {
            group = nbboGroup(instrument, equivalents);
            if (groups.size() < CACHE_LIMIT) {
                groups.put(instrument, group);
            }
        }
        return group;
    }

    /**
     * The instrument field, or null when the value does not start with a valid Avro string. A
     * framed record (byte 0, its writer schema's 4-byte registry id, the body) has it first in
     * its body: every version of the schema keeps it first.
     */
    String instrument(byte[] value) {
        if (value == null) {
            return null;
        }
        int pos = 0;
        if (value.length > 0 && value[0] == MAGIC) {
            if (value.length < FRAME_HEADER) {
                return null;
            }
            pos = FRAME_HEADER;
        }
        // Avro long: zig-zag varint, at most 10 bytes
        long acc = 0;
        int shift = 0;
        while (true) {
            if (pos >= value.length || shift > 63) {
                return null;
            }
            int b = value[pos++] & 0xFF;
            if (shift == 63 && (b & 0x7E) != 0) {
                return null; // more than 64 bits: Python reads a huge length and rejects it too
            }
            acc |= (long) (b & 0x7F) << shift;
            if ((b & 0x80) == 0) {
                break;
            }
            shift += 7;
        }
        long length = (acc >>> 1) ^ -(acc & 1);
        if (length < 0 || length > value.length - pos) {
            return null;
        }
        decoder.reset();
        try {
            CharBuffer chars = decoder.decode(ByteBuffer.wrap(value, pos, (int) length));
            return chars.toString();
        } catch (CharacterCodingException e) {
            return null;
        }
    }

    /**
     * The instrument whose NBBO this one joins: {@code BTC-USDT} becomes {@code BTC-USD} when
     * USDT is declared equivalent to USD; the instrument itself otherwise.
     */
    static String nbboGroup(String instrument, Map<String, String> equivalents) {
        int dash = instrument.lastIndexOf('-');
        if (dash < 0) {
            return instrument;
        }
        String target = equivalents.get(instrument.substring(dash + 1));
        if (target == null) {
            return instrument;
        }
        return instrument.substring(0, dash + 1) + target;
    }
}
