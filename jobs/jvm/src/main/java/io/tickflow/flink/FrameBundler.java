package io.tickflow.flink;

import org.apache.flink.api.common.typeinfo.BasicTypeInfo;
import org.apache.flink.api.common.typeinfo.PrimitiveArrayTypeInfo;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.java.typeutils.RowTypeInfo;
import org.apache.flink.metrics.Counter;
import org.apache.flink.streaming.api.operators.AbstractStreamOperator;
import org.apache.flink.streaming.api.operators.BoundedOneInput;
import org.apache.flink.streaming.api.operators.OneInputStreamOperator;
import org.apache.flink.streaming.api.watermark.Watermark;
import org.apache.flink.streaming.runtime.streamrecord.StreamRecord;
import org.apache.flink.types.Row;

import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.Map;

/**
 * Bundles raw frames per NBBO group so the Python operator downstream is called once per bundle
 * instead of once per frame.
 *
 * <p>Input: raw Kafka values (Avro {@code RawEnvelope}) with the Kafka timestamp as the record
 * timestamp. Output: {@code Row(key: String, bundle: byte[])} (see {@link FrameBundle} for the
 * bundle format), keyed downstream with {@link BundleKey}. The key is the instrument's NBBO
 * group; a value whose instrument cannot be read gets the key "" and is bundled like any other
 * (the core dead-letters it).
 *
 * <p>Stateless: every buffered frame is emitted before a watermark is forwarded, before a
 * checkpoint barrier, at the end of input and at most {@code maxDelayMs} after it arrived; a key
 * is also emitted as soon as it holds {@code maxFrames} frames. Before a barrier every key this
 * subtask has emitted since it started gets a bundle with the {@link FrameBundle#PERSIST} flag
 * (empty if nothing is buffered for it): the operator downstream writes the keyed state that
 * changed since the last barrier, by frames or by its timers, only then (a key quiet since the
 * last barrier may still have had timers fire). Exactly-once is unchanged since nothing is held
 * across a checkpoint.
 *
 * <p>The output is a {@link Row} whose field 0 is the key because PyFlink's keyed Python
 * operators take {@code Row(key, value)} records and hand the Python function field 1.
 */
public class FrameBundler extends AbstractStreamOperator<Row>
        implements OneInputStreamOperator<byte[], Row>, BoundedOneInput {

    private static final long serialVersionUID = 1L;

    private final HashMap<String, String> equivalents;
    private final int maxFrames;
    private final long maxDelayMs;

    private transient InstrumentKeys keys;
    /** Buffers by key, in first-seen order (emission order of a flush); kept when empty. */
    private transient LinkedHashMap<String, FrameBundle> buffers;
    /** Every key emitted since the operator started, with its last bundle's timestamp. */
    private transient LinkedHashMap<String, Long> seen;
    /** Keys whose bundle of the current pre-barrier flush already carried the flag. */
    private transient HashMap<String, Boolean> flagged;
    private transient boolean ended;
    private transient int bufferedFrames;
    private transient boolean timerPending;

    private transient Counter bundlesOut;
    private transient Counter framesOut;
    private transient Counter persistBundlesOut;

    /**
     * @param equivalents quote currency to the quote it joins for the NBBO (USDT to USD), often
     *     empty
     * @param maxFrames a key's bundle is emitted when it holds this many frames (1 or more)
     * @param maxDelayMs longest a frame waits in a bundle (processing time, 1 or more)
     */
    public FrameBundler(Map<String, String> equivalents, int maxFrames, long maxDelayMs) {
        if (maxFrames < 1) {
            throw new IllegalArgumentException("maxFrames must be at least 1, got " + maxFrames);
        }
        if (maxDelayMs < 1) {
            throw new IllegalArgumentException("maxDelayMs must be at least 1, got " + maxDelayMs);
        }
        this.equivalents = new HashMap<>(equivalents);
        this.maxFrames = maxFrames;
        this.maxDelayMs = maxDelayMs;
    }

    /** The output type: {@code Row(STRING, PRIMITIVE_ARRAY(BYTE))}. */
    public static TypeInformation<Row> outputType() {
        return new RowTypeInfo(
                new TypeInformation<?>[] {
                    BasicTypeInfo.STRING_TYPE_INFO,
                    PrimitiveArrayTypeInfo.BYTE_PRIMITIVE_ARRAY_TYPE_INFO
                },
                new String[] {"key", "bundle"});
    }

    @Override
    public void open() throws Exception {
        super.open();
        keys = new InstrumentKeys(equivalents);
        buffers = new LinkedHashMap<>();
        seen = new LinkedHashMap<>();
        flagged = new HashMap<>();
        ended = false;
        bufferedFrames = 0;
        timerPending = false;
        bundlesOut = getMetricGroup().counter("bundles");
        framesOut = getMetricGroup().counter("bundledFrames");
        persistBundlesOut = getMetricGroup().counter("persistBundles");
    }

    @Override
    public void processElement(StreamRecord<byte[]> element) throws Exception {
        byte[] value = element.getValue();
        if (value == null) {
            value = new byte[0]; // a tombstone: its instrument is unreadable like any garbage
        }
        String key = keys.keyOf(value);
        FrameBundle bundle = buffers.get(key);
        if (bundle == null) {
            bundle = new FrameBundle();
            buffers.put(key, bundle);
        }
        bundle.append(element.hasTimestamp() ? element.getTimestamp() : FrameBundle.NO_TIMESTAMP, value);
        bufferedFrames++;
        if (bundle.frames() >= maxFrames) {
            emit(key, bundle, (byte) 0);
        } else if (!timerPending) {
            timerPending = true;
            long now = getProcessingTimeService().getCurrentProcessingTime();
            getProcessingTimeService().registerTimer(now + maxDelayMs, this::onDelayTimer);
        }
    }

    private void onDelayTimer(long time) {
        timerPending = false;
        flushAll((byte) 0);
    }

    @Override
    public void processWatermark(Watermark mark) throws Exception {
        flushAll((byte) 0);
        super.processWatermark(mark);
    }

    @Override
    public void prepareSnapshotPreBarrier(long checkpointId) throws Exception {
        super.prepareSnapshotPreBarrier(checkpointId);
        flushPersist();
    }

    @Override
    public void endInput() throws Exception {
        flushPersist();
        ended = true;
    }

    @Override
    public void finish() throws Exception {
        if (!ended) {
            flushPersist();
            ended = true;
        }
        super.finish();
    }

    /** Every buffered frame, and a persist flag for every key emitted since the start. */
    private void flushPersist() {
        if (buffers == null) {
            return;
        }
        flagged.clear();
        flushAll(FrameBundle.PERSIST);
        for (Map.Entry<String, Long> entry : seen.entrySet()) {
            if (!flagged.containsKey(entry.getKey())) {
                output(entry.getKey(), FrameBundle.empty(FrameBundle.PERSIST), entry.getValue(), 0);
            }
        }
        flagged.clear();
    }

    private void flushAll(byte flags) {
        if (bufferedFrames == 0) {
            return;
        }
        for (Map.Entry<String, FrameBundle> entry : buffers.entrySet()) {
            if (entry.getValue().frames() > 0) {
                emit(entry.getKey(), entry.getValue(), flags);
            }
        }
    }

    private void emit(String key, FrameBundle bundle, byte flags) {
        int frames = bundle.frames();
        long timestamp = bundle.maxTimestamp();
        bufferedFrames -= frames;
        output(key, bundle.drain(flags), timestamp, frames);
        seen.put(key, timestamp);
        if ((flags & FrameBundle.PERSIST) != 0) {
            flagged.put(key, Boolean.TRUE); // this bundle carries the flag
        }
    }

    private void output(String key, byte[] bytes, long timestamp, int frames) {
        Row row = Row.of(key, bytes);
        if (timestamp == FrameBundle.NO_TIMESTAMP) {
            output.collect(new StreamRecord<>(row));
        } else {
            output.collect(new StreamRecord<>(row, timestamp));
        }
        bundlesOut.inc();
        framesOut.inc(frames);
        if ((bytes[1] & FrameBundle.PERSIST) != 0) {
            persistBundlesOut.inc();
        }
    }
}
