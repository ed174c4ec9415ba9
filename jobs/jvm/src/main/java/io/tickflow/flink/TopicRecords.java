package io.tickflow.flink;

import org.apache.flink.api.common.functions.FlatMapFunction;
import org.apache.flink.util.Collector;

import java.nio.charset.StandardCharsets;
import java.util.Arrays;

/**
 * The Kafka records of one logical output ("nbbo", "deadletter", ...) in the Python operator's
 * sink blobs, each the bytes of one Kafka value (JSON text, or framed Avro for a result topic
 * written as Avro) for a Kafka sink (Flink's ByteArraySchema). Sections of other kinds or names are
 * skipped; a malformed blob throws.
 */
public class TopicRecords implements FlatMapFunction<byte[], byte[]> {

    private static final long serialVersionUID = 1L;

    private final String output;
    private final byte[] outputName;

    public TopicRecords(String output) {
        this.output = output;
        this.outputName = output.getBytes(StandardCharsets.UTF_8);
    }

    @Override
    public void flatMap(byte[] blob, Collector<byte[]> out) throws Exception {
        SinkBlob.forEachSection(
                blob,
                (kind, b, nameOffset, nameLength, count, payloadOffset, payloadLength) -> {
                    if (kind == SinkBlob.KAFKA_RECORDS
                            && SinkBlob.nameEquals(b, nameOffset, nameLength, outputName)) {
                        emitRecords(b, nameOffset, count, payloadOffset, payloadLength, out);
                    }
                });
    }

    private void emitRecords(
            byte[] blob,
            int sectionOffset,
            long count,
            int payloadOffset,
            int payloadLength,
            Collector<byte[]> out) {
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
            out.collect(Arrays.copyOfRange(blob, pos, pos + (int) length));
            pos += (int) length;
        }
        if (pos != end) {
            throw SinkBlob.malformed(
                    blob, sectionOffset, output + ": " + (end - pos) + " bytes after " + count + " records");
        }
    }
}
