package io.tickflow.flink;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import org.apache.flink.util.Collector;
import org.junit.jupiter.api.Test;

class TopicRecordsTest {

    private static List<String> split(String output, byte[] blob) throws Exception {
        List<String> out = new ArrayList<>();
        new TopicRecords(output).flatMap(blob, new Collector<>() {
            @Override
            public void collect(byte[] record) {
                out.add(new String(record, StandardCharsets.UTF_8));
            }

            @Override
            public void close() {}
        });
        return out;
    }

    @Test
    void emitsTheRecordsOfItsOutputOnly() throws Exception {
        byte[] blob = new Blobs()
                .rows("trades", 2, new byte[] {1, 2, 3})
                .records("nbbo", "{\"a\":1}", "{\"é\":\"€\"}")
                .records("bars", "{\"bar\":1}")
                .section(9, "future", 1, new byte[] {7, 7})
                .records("nbbo", "")
                .bytes();
        assertEquals(List.of("{\"a\":1}", "{\"é\":\"€\"}", ""), split("nbbo", blob));
        assertEquals(List.of("{\"bar\":1}"), split("bars", blob));
        assertEquals(List.of(), split("deadletter", blob));
        assertEquals(List.of(), split("trades", blob)); // a table, not a Kafka output
    }

    @Test
    void aBlobWithoutSectionsIsEmpty() throws Exception {
        assertTrue(split("nbbo", new Blobs().bytes()).isEmpty());
    }

    @Test
    void binaryRecordsComeThroughByteForByte() throws Exception {
        byte[] avro = {0x00, 0x00, 0x00, 0x01, 0x2A, (byte) 0xFF, 0x0A, 0x00};
        byte[] payload = new byte[4 + avro.length];
        payload[0] = (byte) avro.length; // u32 little-endian
        System.arraycopy(avro, 0, payload, 4, avro.length);
        byte[] blob = new Blobs().section(SinkBlob.KAFKA_RECORDS, "nbbo", 1, payload).bytes();
        List<byte[]> out = new ArrayList<>();
        new TopicRecords("nbbo").flatMap(blob, new Collector<>() {
            @Override
            public void collect(byte[] record) {
                out.add(record);
            }

            @Override
            public void close() {}
        });
        assertEquals(1, out.size());
        assertArrayEquals(avro, out.get(0));
    }

    @Test
    void malformedBlobsThrowClearly() {
        byte[] good = new Blobs().records("nbbo", "{\"a\":1}").bytes();
        IllegalArgumentException wrongVersion = assertThrows(IllegalArgumentException.class, () -> {
            byte[] b = good.clone();
            b[0] = 2;
            split("nbbo", b);
        });
        assertTrue(wrongVersion.getMessage().contains("version 2"), wrongVersion.getMessage());
        assertThrows(IllegalArgumentException.class, () -> split("nbbo", new byte[0]));
        for (int cut = 2; cut < good.length; cut++) {
            byte[] truncated = Arrays.copyOf(good, cut);
            IllegalArgumentException e = assertThrows(
                    IllegalArgumentException.class, () -> split("nbbo", truncated), "cut at " + cut);
            assertTrue(e.getMessage().startsWith("malformed sink blob"), e.getMessage());
        }
        // count says 2, payload has 1 record
        byte[] payload = Arrays.copyOfRange(good, 1 + 1 + 2 + 4 + 4 + 4, good.length);
        byte[] lying = new Blobs().section(SinkBlob.KAFKA_RECORDS, "nbbo", 2, payload).bytes();
        assertThrows(IllegalArgumentException.class, () -> split("nbbo", lying));
        // a malformed section of another name is still an error: the blob is unreadable
        assertThrows(IllegalArgumentException.class, () -> split("bars", Arrays.copyOf(good, good.length - 1)));
    }
}
