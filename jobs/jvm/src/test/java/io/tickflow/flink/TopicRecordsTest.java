package io.tickflow.flink;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Map;
import org.apache.flink.api.java.tuple.Tuple2;
import org.apache.flink.util.Collector;
import org.junit.jupiter.api.Test;

class TopicRecordsTest {

    private static List<Tuple2<String, byte[]>> records(Map<String, String> topics, byte[] blob)
            throws Exception {
        List<Tuple2<String, byte[]>> out = new ArrayList<>();
        new TopicRecords(topics).flatMap(blob, new Collector<>() {
            @Override
            public void collect(Tuple2<String, byte[]> record) {
                out.add(record);
            }

            @Override
            public void close() {}
        });
        return out;
    }

    /** The values of one output's records, as text. */
    private static List<String> split(String output, byte[] blob) throws Exception {
        List<String> out = new ArrayList<>();
        for (Tuple2<String, byte[]> record : records(Map.of(output, output + "-topic"), blob)) {
            assertEquals(output + "-topic", record.f0);
            out.add(new String(record.f1, StandardCharsets.UTF_8));
        }
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
    void severalOutputsComeInBlobOrderEachWithItsTopic() throws Exception {
        byte[] blob = new Blobs()
                .records("nbbo", "n1")
                .records("bars", "b1", "b2")
                .records("deadletter", "d1")
                .records("nbbo", "n2")
                .bytes();
        List<String> out = new ArrayList<>();
        for (Tuple2<String, byte[]> record :
                records(Map.of("nbbo", "tickflow.nbbo", "bars", "tickflow.bars"), blob)) {
            out.add(record.f0 + " " + new String(record.f1, StandardCharsets.UTF_8));
        }
        assertEquals(List.of("tickflow.nbbo n1", "tickflow.bars b1", "tickflow.bars b2", "tickflow.nbbo n2"), out);
    }

    @Test
    void theSerializerWritesTheValueToItsTopic() {
        byte[] value = {1, 2, 3};
        var serializer = new TopicRecordSerializer(List.of("tickflow.nbbo", "t"));
        var record = serializer.serialize(Tuple2.of("tickflow.nbbo", value), null, 42L);
        assertEquals("tickflow.nbbo", record.topic());
        assertArrayEquals(value, record.value());
        assertEquals(null, record.key());
        assertEquals(null, record.partition());
        assertEquals(42L, record.timestamp());
        assertEquals(null, serializer.serialize(Tuple2.of("t", value), null, null).timestamp());
        assertEquals(null, serializer.serialize(Tuple2.of("t", value), null, -1L).timestamp());
        assertEquals(
                List.of("tickflow.nbbo", "t"),
                serializer.getKafkaDatasetFacet().orElseThrow().getTopicIdentifier().getTopics());
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
        List<Tuple2<String, byte[]>> out = records(Map.of("nbbo", "nbbo"), blob);
        assertEquals(1, out.size());
        assertArrayEquals(avro, out.get(0).f1);
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
