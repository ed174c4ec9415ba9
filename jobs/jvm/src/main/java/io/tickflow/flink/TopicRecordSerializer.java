package io.tickflow.flink;

import org.apache.flink.api.java.tuple.Tuple2;
import org.apache.flink.connector.kafka.lineage.DefaultKafkaDatasetFacet;
import org.apache.flink.connector.kafka.lineage.DefaultKafkaDatasetIdentifier;
import org.apache.flink.connector.kafka.lineage.KafkaDatasetFacet;
import org.apache.flink.connector.kafka.lineage.KafkaDatasetFacetProvider;
import org.apache.flink.connector.kafka.sink.KafkaRecordSerializationSchema;
import org.apache.flink.kafka.shaded.org.apache.kafka.clients.producer.ProducerRecord;

import java.util.ArrayList;
import java.util.List;
import java.util.Optional;

/**
 * (topic, value bytes), as {@link TopicRecords} emits them, as a Kafka record of that topic: the
 * value as it is, no key, the partitioner's choice of partition (every output topic has one), and
 * the element's timestamp where it has one (as Flink's own record serializer does).
 *
 * <p>It names the topics it writes to (the sink's POOLING transaction naming asks for them).
 */
public class TopicRecordSerializer
        implements KafkaRecordSerializationSchema<Tuple2<String, byte[]>>, KafkaDatasetFacetProvider {

    private static final long serialVersionUID = 1L;

    private final ArrayList<String> topics;

    /** @param topics every topic the records go to */
    public TopicRecordSerializer(List<String> topics) {
        this.topics = new ArrayList<>(topics);
    }

    @Override
    public ProducerRecord<byte[], byte[]> serialize(
            Tuple2<String, byte[]> record, KafkaSinkContext context, Long timestamp) {
        Long recordTimestamp = timestamp == null || timestamp < 0L ? null : timestamp;
        return new ProducerRecord<>(record.f0, null, recordTimestamp, null, record.f1);
    }

    @Override
    public Optional<KafkaDatasetFacet> getKafkaDatasetFacet() {
        return Optional.of(new DefaultKafkaDatasetFacet(DefaultKafkaDatasetIdentifier.ofTopics(topics)));
    }
}
