package io.tickflow.flink;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;

import java.util.Map;
import org.junit.jupiter.api.Test;

class InstrumentKeysTest {

    private final InstrumentKeys plain = new InstrumentKeys(Map.of());
    private final InstrumentKeys usdt = new InstrumentKeys(Map.of("USDT", "USD"));

    @Test
    void readsTheInstrumentField() {
        assertEquals("BTC-USD", plain.keyOf(Bundles.envelope("BTC-USD", "coinbase...")));
        assertEquals("ÉTH-€", plain.keyOf(Bundles.envelope("ÉTH-€", "")));
    }

    @Test
    void mapsEquivalentQuotesToTheirNbboGroup() {
        assertEquals("BTC-USD", usdt.keyOf(Bundles.envelope("BTC-USDT", "x")));
        assertEquals("BTC-USD", usdt.keyOf(Bundles.envelope("BTC-USD", "x")));
        assertEquals("BTC-EUR", usdt.keyOf(Bundles.envelope("BTC-EUR", "x")));
        assertEquals("USDT", usdt.keyOf(Bundles.envelope("USDT", "x"))); // no '-': itself
        assertEquals("A-B-USD", usdt.keyOf(Bundles.envelope("A-B-USDT", "x"))); // last '-'
        assertEquals("-USD", usdt.keyOf(Bundles.envelope("-USDT", "x")));
        assertEquals("BTC-", usdt.keyOf(Bundles.envelope("BTC-", "x")));
    }

    @Test
    void unreadableInstrumentsGetTheEmptyKey() {
        assertEquals("", plain.keyOf(new byte[0]));
        assertEquals("", plain.keyOf(new byte[] {(byte) 0x80})); // varint never ends
        assertEquals("", plain.keyOf(new byte[] {0x01, 'a'})); // length -1
        assertEquals("", plain.keyOf(new byte[] {0x0A, 'a', 'b'})); // length 5, 2 bytes
        assertEquals("", plain.keyOf(Bundles.withInstrumentBytes(new byte[] {'B', (byte) 0xFF}, "x")));
        assertEquals("", plain.keyOf(Bundles.withInstrumentBytes(new byte[] {(byte) 0xC3}, ""))); // cut
        // a UTF-8-encoded surrogate is invalid UTF-8 (Python's decode() refuses it too)
        assertEquals("", plain.keyOf(Bundles.withInstrumentBytes(new byte[] {(byte) 0xED, (byte) 0xA0, (byte) 0x80}, "")));
        byte[] elevenBytes = {
            (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF,
            (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, (byte) 0xFF, 0x01
        };
        assertEquals("", plain.keyOf(elevenBytes));
        assertNull(plain.instrument(null));
        assertEquals("", plain.keyOf(new byte[] {0x00})); // an empty instrument is empty too
    }

    @Test
    void readsTheInstrumentOfAFramedRecord() {
        byte[] body = Bundles.envelope("BTC-USDT", "x");
        byte[] framed = new byte[5 + body.length];
        framed[4] = 42; // schema id 42, big-endian, after the magic byte 0
        System.arraycopy(body, 0, framed, 5, body.length);
        assertEquals("BTC-USD", usdt.keyOf(framed));
        assertEquals("", plain.keyOf(new byte[] {0x00, 0x00, 0x00, 0x2A})); // id cut short
    }

    @Test
    void recoversAfterABadValue() {
        assertEquals("", plain.keyOf(Bundles.withInstrumentBytes(new byte[] {(byte) 0xFF}, "")));
        assertEquals("ETH-USD", plain.keyOf(Bundles.envelope("ETH-USD", "")));
    }
}
