package io.tickflow.flink;

import org.apache.flink.api.common.functions.FlatMapFunction;
import org.apache.flink.api.java.tuple.Tuple2;
import org.apache.flink.util.Collector;

import java.util.Arrays;
import java.util.HashMap;
import java.util.Map;

/**
 * The Kafka records of some logical outputs ("nbbo", "deadletter", ...) in the Python operator's
 * sink blobs, each as (its output's topic, the bytes of one Kafka value: JSON text, or framed Avro
 * for a result topic written as Avro), for one Kafka sink of them all ({@link
 * TopicRecordSerializer}). Sections of other kinds or outputs are skipped; a malformed blob throws.
 *
 * <p>One sink for several topics: each exactly-once sink restores, aborts and opens its own
 * transactional producer when the job restarts, every book waiting on them (their inputs fill).
 */
public class TopicRecords implements FlatMapFunction<byte[], Tuple2<String, byte[]>> {

    private static final long serialVersionUID = 1L;

    private final HashMap<String, String> topics;

    /** @param topics the topic of each output to emit, by output name */
    public TopicRecords(Map<String, String> topics) {
        this.topics = new HashMap<>(topics);
    }

    @Override
    public void flatMap(byte[] blob, Collector<Tuple2<String, byte[]>> out) throws Exception {
        SinkBlob.forEachSection(
                blob,
                (kind, b, nameOffset, nameLength, count, payloadOffset, payloadLength) -> {
                    if (kind != SinkBlob.KAFKA_RECORDS) {
                        return;
                    }
                    String output = SinkBlob.name(b, nameOffset, nameLength);
                    String topic = topics.get(output);
                    if (topic != null) {
                        emitRecords(b, output, topic, nameOffset, count, payloadOffset, payloadLength, out);
                    }
                });
    }

    private static void emitRecords(
            byte[] blob,
            String output,
            String topic,
            int sectionOffset,
            long count,
            int payloadOffset,
            int payloadLength,
            Collector<Tuple2<String, byte[]>> out) {
        int pos = payloadOffset;
        int end = payloadOffset + payloadLength;
        for (long i = 0; i < count; i++) {
            if (end - pos < 4) {
                throw SinkBlob.malformed(
                        blob, sectionOffset, output + " record " + i + " of " + count + ": truncated length");
            }
            long length = SinkBlob.u32(blob, pos);
            pos += 4;
            if (length > end - pos) {
                throw SinkBlob.malformed(
                        blob,
                        sectionOffset,
                        output + " record " + i + " of " + count + ": " + length + " bytes, "
                                + (end - pos) + " left in the section");
            }
            out.collect(Tuple2.of(topic, Arrays.copyOfRange(blob, pos, pos + (int) length)));
            pos += (int) length;
        }
        if (pos != end) {
            throw SinkBlob.malformed(
                    blob, sectionOffset, output + ": " + (end - pos) + " bytes after " + count + " records");
        }
    }
}
