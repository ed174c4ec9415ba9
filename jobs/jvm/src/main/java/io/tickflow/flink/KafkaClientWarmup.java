package io.tickflow.flink;

import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.functions.RichMapFunction;
import org.apache.flink.kafka.shaded.org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.flink.kafka.shaded.org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.flink.kafka.shaded.org.apache.kafka.common.KafkaException;
import org.apache.flink.kafka.shaded.org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.flink.kafka.shaded.org.apache.kafka.common.serialization.ByteArraySerializer;

import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

import java.time.Duration;
import java.util.HashMap;
import java.util.Map;
import java.util.Properties;

/**
 * Opens a Kafka consumer and a producer as the pipeline's source and sinks do (the connector's
 * relocated client, the job's properties: TLS, SASL), asks each for a topic's partitions, and
 * passes its input on.
 *
 * <p>The warm-up job (jobs/warmup.py) runs it on every TaskManager with a free slot. A TaskManager
 * that never ran the pipeline otherwise loads and compiles the client, TLS and SCRAM code while
 * the pipeline restarts on it, every book stale: ~5 s more than on a TaskManager that had (the
 * HA drill's TaskManager loss). The connector is in Flink's lib/, so what one job loads, the next
 * job on that TaskManager finds loaded.
 */
public class KafkaClientWarmup extends RichMapFunction<Integer, Integer> {

    private static final long serialVersionUID = 1L;
    private static final Logger LOG = LoggerFactory.getLogger(KafkaClientWarmup.class);

    private final HashMap<String, String> properties;
    private final String topic;
    private final long timeoutMs;

    /**
     * @param properties the Kafka client properties the pipeline's clients use, bootstrap.servers
     *     included
     * @param topic a topic the clients may describe
     * @param timeoutMs how long each client may take; a warm-up that cannot reach Kafka logs it
     *     and goes on (the pipeline's own clients then wait as they would have)
     */
    public KafkaClientWarmup(Map<String, String> properties, String topic, long timeoutMs) {
        this.properties = new HashMap<>(properties);
        this.topic = topic;
        this.timeoutMs = timeoutMs;
    }

    @Override
    public void open(OpenContext openContext) {
        long started = System.nanoTime();
        try {
            warmConsumer();
            warmProducer();
            LOG.info(
                    "Kafka clients opened for topic {} in {} ms",
                    topic,
                    (System.nanoTime() - started) / 1_000_000);
        } catch (KafkaException e) {
            LOG.warn("Kafka clients could not warm up (the pipeline's will): {}", e.toString());
        }
    }

    private void warmConsumer() {
        Properties config = clientProperties();
        config.put("key.deserializer", ByteArrayDeserializer.class.getName());
        config.put("value.deserializer", ByteArrayDeserializer.class.getName());
        try (KafkaConsumer<byte[], byte[]> consumer = new KafkaConsumer<>(config)) {
            consumer.partitionsFor(topic, Duration.ofMillis(timeoutMs));
        }
    }

    private void warmProducer() {
        Properties config = clientProperties();
        config.put("key.serializer", ByteArraySerializer.class.getName());
        config.put("value.serializer", ByteArraySerializer.class.getName());
        config.put("max.block.ms", Long.toString(timeoutMs));
        try (KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(config)) {
            producer.partitionsFor(topic);
        }
    }

    private Properties clientProperties() {
        Properties config = new Properties();
        config.putAll(properties);
        int subtask = getRuntimeContext().getTaskInfo().getIndexOfThisSubtask();
        config.put("client.id", "tickflow-warmup-" + subtask);
        return config;
    }

    @Override
    public Integer map(Integer value) {
        return value;
    }
}
