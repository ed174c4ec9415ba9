package io.tickflow.flink;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import org.apache.flink.streaming.api.watermark.Watermark;
import org.apache.flink.streaming.runtime.streamrecord.StreamRecord;
import org.apache.flink.streaming.util.OneInputStreamOperatorTestHarness;
import org.apache.flink.types.Row;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;

class FrameBundlerTest {

    private OneInputStreamOperatorTestHarness<byte[], Row> harness;

    private record Out(String key, Bundles.Decoded bundle, Long timestamp) {}

    private void open(int maxFrames, long maxDelayMs, Map<String, String> equivalents) throws Exception {
        harness = new OneInputStreamOperatorTestHarness<>(new FrameBundler(equivalents, maxFrames, maxDelayMs));
        harness.setup(FrameBundler.outputType().createSerializer(new org.apache.flink.api.common.serialization.SerializerConfigImpl()));
        harness.open();
    }

    @AfterEach
    void close() throws Exception {
        if (harness != null) {
            harness.close();
        }
    }

    /** Bundles output since the last call (watermarks skipped). */
    private List<Out> drain() {
        List<Out> out = new ArrayList<>();
        for (Object o : harness.getOutput()) {
            if (o instanceof StreamRecord<?> record) {
                Row row = (Row) record.getValue();
                out.add(new Out(
                        (String) row.getField(0),
                        Bundles.decode((byte[]) row.getField(1)),
                        record.hasTimestamp() ? record.getTimestamp() : null));
            }
        }
        harness.getOutput().clear();
        return out;
    }

    private static byte[] frame(String instrument, int n) {
        return Bundles.envelope(instrument, "payload-" + n);
    }

    @Test
    void emitsAKeysBundleWhenItHoldsMaxFrames() throws Exception {
        open(3, 1000, Map.of("USDT", "USD"));
        harness.processElement(frame("BTC-USD", 1), 10);
        harness.processElement(frame("ETH-USD", 2), 11);
        harness.processElement(frame("BTC-USDT", 3), 12);
        assertTrue(drain().isEmpty());
        harness.processElement(frame("BTC-USD", 4), 9);
        List<Out> out = drain();
        assertEquals(1, out.size());
        Out btc = out.get(0);
        assertEquals("BTC-USD", btc.key());
        assertEquals(1, btc.bundle().version());
        assertFalse(btc.bundle().persist());
        assertEquals(12L, btc.timestamp()); // the largest frame timestamp
        assertEquals(3, btc.bundle().frames().size());
        assertArrayEquals(frame("BTC-USD", 1), btc.bundle().frames().get(0).value());
        assertArrayEquals(frame("BTC-USDT", 3), btc.bundle().frames().get(1).value());
        assertEquals(12L, btc.bundle().frames().get(1).timestamp());
        assertEquals(9L, btc.bundle().frames().get(2).timestamp());
    }

    @Test
    void badValuesAreBundledUnderTheEmptyKey() throws Exception {
        open(2, 1000, Map.of());
        harness.processElement(new byte[] {(byte) 0xFF}, 1);
        harness.processElement(Bundles.withInstrumentBytes(new byte[] {(byte) 0xC3, 0x28}, "x"), 2);
        List<Out> out = drain();
        assertEquals(1, out.size());
        assertEquals("", out.get(0).key());
        assertEquals(2, out.get(0).bundle().frames().size());
        assertArrayEquals(new byte[] {(byte) 0xFF}, out.get(0).bundle().frames().get(0).value());
    }

    @Test
    void aTombstoneIsBundledUnderTheEmptyKeyAsNoBytes() throws Exception {
        // the core dead-letters it ("cannot decode RawEnvelope (0 bytes)"); nothing here throws
        open(1, 1000, Map.of());
        harness.processElement(new StreamRecord<>((byte[]) null, 3));
        Out out = drain().get(0);
        assertEquals("", out.key());
        assertArrayEquals(new byte[0], out.bundle().frames().get(0).value());
    }

    @Test
    void recordsWithoutTimestampCarryTheSentinel() throws Exception {
        open(1, 1000, Map.of());
        harness.processElement(new StreamRecord<>(frame("BTC-USD", 1)));
        Out out = drain().get(0);
        assertEquals(Long.MIN_VALUE, out.bundle().frames().get(0).timestamp());
        assertEquals(null, out.timestamp());
    }

    @Test
    void flushesEverythingBeforeForwardingAWatermark() throws Exception {
        open(100, 1000, Map.of());
        harness.processElement(frame("BTC-USD", 1), 5);
        harness.processElement(frame("ETH-USD", 2), 6);
        harness.processWatermark(new Watermark(6));
        List<Object> raw = new ArrayList<>(harness.getOutput());
        assertEquals(3, raw.size());
        assertTrue(raw.get(0) instanceof StreamRecord);
        assertTrue(raw.get(1) instanceof StreamRecord);
        assertEquals(new Watermark(6), raw.get(2));
        List<Out> out = drain();
        assertEquals(List.of("BTC-USD", "ETH-USD"), out.stream().map(Out::key).toList());
        assertFalse(out.get(0).bundle().persist());
    }

    @Test
    void flushesAfterMaxDelay() throws Exception {
        open(100, 50, Map.of());
        harness.setProcessingTime(1000);
        harness.processElement(frame("BTC-USD", 1), 5);
        harness.setProcessingTime(1049);
        assertTrue(drain().isEmpty());
        harness.setProcessingTime(1050);
        List<Out> out = drain();
        assertEquals(1, out.size());
        assertEquals(1, out.get(0).bundle().frames().size());
        // no timer while nothing is buffered; a new frame starts a new one
        assertEquals(0, harness.getProcessingTimeService().getNumActiveTimers());
        harness.processElement(frame("BTC-USD", 2), 6);
        assertEquals(1, harness.getProcessingTimeService().getNumActiveTimers());
        harness.processElement(frame("ETH-USD", 3), 7);
        assertEquals(1, harness.getProcessingTimeService().getNumActiveTimers());
        harness.setProcessingTime(1100);
        assertEquals(2, drain().size());
    }

    @Test
    void preBarrierFlushFlagsEverySeenKey() throws Exception {
        open(2, 1000, Map.of());
        harness.processElement(frame("BTC-USD", 1), 1);
        harness.processElement(frame("BTC-USD", 2), 2); // emitted (full), no flag
        harness.processElement(frame("ETH-USD", 3), 3); // buffered
        harness.processElement(frame("SOL-USD", 4), 4);
        harness.processElement(frame("SOL-USD", 5), 5); // emitted (full)
        harness.processElement(frame("SOL-USD", 6), 6); // buffered
        List<Out> before = drain();
        assertEquals(2, before.size());
        assertFalse(before.get(0).bundle().persist());

        harness.prepareSnapshotPreBarrier(1);
        List<Out> out = drain();
        // buffered keys flushed with the flag, then an empty flagged bundle for BTC-USD
        assertEquals(List.of("ETH-USD", "SOL-USD", "BTC-USD"), out.stream().map(Out::key).toList());
        assertTrue(out.stream().allMatch(o -> o.bundle().persist()));
        assertEquals(1, out.get(0).bundle().frames().size());
        assertEquals(1, out.get(1).bundle().frames().size());
        assertEquals(6L, out.get(1).timestamp());
        assertEquals(0, out.get(2).bundle().frames().size());
        assertEquals(2L, out.get(2).timestamp()); // its last bundle's timestamp

        // nothing emitted since: the next barrier flags every key seen (timers may have changed
        // their state downstream), each with an empty bundle and its last timestamp
        harness.prepareSnapshotPreBarrier(2);
        out = drain();
        // (in the order the keys were first emitted)
        assertEquals(List.of("BTC-USD", "SOL-USD", "ETH-USD"), out.stream().map(Out::key).toList());
        assertTrue(out.stream().allMatch(o -> o.bundle().persist() && o.bundle().frames().isEmpty()));
        assertEquals(List.of(2L, 6L, 3L), out.stream().map(Out::timestamp).toList());

        // a key flushed by a watermark is flagged at the next barrier, once
        harness.processElement(frame("ETH-USD", 7), 7);
        harness.processWatermark(new Watermark(7));
        List<Out> flushed = drain();
        assertEquals(1, flushed.size());
        assertFalse(flushed.get(0).bundle().persist());
        harness.processElement(frame("ETH-USD", 8), 8);
        harness.prepareSnapshotPreBarrier(3);
        out = drain();
        assertEquals(List.of("ETH-USD", "BTC-USD", "SOL-USD"), out.stream().map(Out::key).toList());
        assertTrue(out.stream().allMatch(o -> o.bundle().persist()));
        assertEquals(1, out.get(0).bundle().frames().size());
    }

    @Test
    void endOfInputFlushesWithTheFlag() throws Exception {
        open(10, 1000, Map.of());
        harness.processElement(frame("BTC-USD", 1), 1);
        harness.processElement(frame("ETH-USD", 2), 2);
        harness.endInput();
        List<Out> out = drain();
        assertEquals(List.of("BTC-USD", "ETH-USD"), out.stream().map(Out::key).toList());
        assertTrue(out.stream().allMatch(o -> o.bundle().persist()));
        // finish() after endInput has nothing left
        harness.getOneInputOperator().finish();
        assertTrue(drain().isEmpty());
    }

    @Test
    void rejectsNonsenseLimits() {
        org.junit.jupiter.api.Assertions.assertThrows(
                IllegalArgumentException.class, () -> new FrameBundler(Map.of(), 0, 10));
        org.junit.jupiter.api.Assertions.assertThrows(
                IllegalArgumentException.class, () -> new FrameBundler(Map.of(), 10, 0));
    }

    @Test
    void bundleKeyIsARowOfTheKeyField() {
        Row key = new BundleKey().getKey(Row.of("BTC-USD", new byte[] {1}));
        assertEquals(Row.of("BTC-USD"), key);
        assertEquals(Row.of("BTC-USD").hashCode(), key.hashCode());
    }
}
