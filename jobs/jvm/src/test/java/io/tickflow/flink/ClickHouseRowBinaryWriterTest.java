package io.tickflow.flink;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertDoesNotThrow;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.net.URI;
import java.net.URLDecoder;
import java.nio.charset.StandardCharsets;
import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.Executor;
import org.apache.flink.streaming.runtime.tasks.TestProcessingTimeService;
import org.junit.jupiter.api.Test;

class ClickHouseRowBinaryWriterTest {

    private record Post(String query, byte[] body) {}

    private final List<Post> posts = new ArrayList<>();
    private final List<Object> answers = new ArrayList<>(); // Response or IOException, in order
    private final TestProcessingTimeService time = new TestProcessingTimeService();

    private long budget = ClickHouseRowBinaryWriter.DEFAULT_MAX_PENDING_BYTES;

    private ClickHouseRowBinaryWriter writer(int maxRows) {
        ClickHouseHttp http = new ClickHouseHttp("http://ch:8123", (URI uri, byte[] body) -> {
            String raw = uri.getRawQuery();
            posts.add(new Post(URLDecoder.decode(raw.substring("query=".length()), StandardCharsets.UTF_8), body));
            Object answer = answers.isEmpty() ? new ClickHouseHttp.Response(200, "") : answers.remove(0);
            if (answer instanceof IOException e) {
                throw e;
            }
            return (ClickHouseHttp.Response) answer;
        });
        return new ClickHouseRowBinaryWriter(
                http, "tickflow", Map.of("trades", "date, price", "nbbo", "date, instrument"),
                maxRows, 100, time, null, inserter, budget, 0, 1);
    }

    // inserts run where the test says: at once by default, or when a test runs the queue
    private final ArrayDeque<Runnable> queued = new ArrayDeque<>();
    private Executor inserter = Runnable::run;

    private void runQueued() {
        while (!queued.isEmpty()) {
            queued.removeFirst().run();
        }
    }

    @Test
    void insertsATableWhenItHoldsMaxRows() throws Exception {
        ClickHouseRowBinaryWriter w = writer(3);
        w.write(new Blobs().rows("trades", 2, new byte[] {1, 2}).records("nbbo", "{}").bytes(), null);
        assertTrue(posts.isEmpty());
        w.write(new Blobs().rows("trades", 1, new byte[] {3}).rows("nbbo", 1, new byte[] {9}).bytes(), null);
        assertEquals(1, posts.size());
        assertEquals("INSERT INTO tickflow.trades (date, price) FORMAT RowBinary", posts.get(0).query());
        assertArrayEquals(new byte[] {1, 2, 3}, posts.get(0).body());
        assertEquals(1, w.bufferedRows());
        w.flush(false);
        assertEquals(2, posts.size());
        assertEquals("INSERT INTO tickflow.nbbo (date, instrument) FORMAT RowBinary", posts.get(1).query());
        w.flush(true); // nothing left
        assertEquals(2, posts.size());
    }

    @Test
    void flushesOnItsTimer() throws Exception {
        ClickHouseRowBinaryWriter w = writer(1000);
        time.setCurrentTime(0);
        w.write(new Blobs().rows("trades", 1, new byte[] {1}).bytes(), null);
        time.setCurrentTime(99);
        assertTrue(posts.isEmpty());
        time.setCurrentTime(100);
        assertEquals(1, posts.size());
        assertEquals(0, time.getNumActiveTimers());
    }

    @Test
    void anUnreachableClickHouseIsRetriedUntilItTakesTheRows() throws Exception {
        ClickHouseRowBinaryWriter w = writer(1);
        answers.add(new IOException("closed by the server"));
        w.write(new Blobs().rows("trades", 1, new byte[] {5}).bytes(), null);
        assertEquals(2, posts.size()); // one I/O error is retried at once, not counted
        assertEquals(0, w.retries());

        for (int i = 0; i < 6; i++) {
            answers.add(new IOException("connection refused " + i));
        }
        answers.add(new ClickHouseHttp.Response(503, "shutting down"));
        answers.add(new ClickHouseHttp.Response(500, "Code: 252, e.displayText() = DB::Exception: Too many parts"));
        answers.add(new ClickHouseHttp.Response(500, "Code: 241, Memory limit exceeded"));
        w.write(new Blobs().rows("trades", 1, new byte[] {6}).bytes(), null);
        assertEquals(2 + 6 + 3 + 1, posts.size());
        assertEquals(6, w.retries()); // 3 pairs of I/O errors, then three transient answers
        assertArrayEquals(new byte[] {6}, posts.get(posts.size() - 1).body());
        assertEquals(0, w.insertsInFlight());
    }

    @Test
    void dataAndSchemaErrorsAreRefusalsNotOutages() {
        assertTrue(ClickHouseHttp.mayPassLater(500, "Code: 241, e.displayText() = Memory limit (total) exceeded"));
        assertTrue(ClickHouseHttp.mayPassLater(503, ""));
        assertTrue(ClickHouseHttp.mayPassLater(500, "<html>proxy error</html>"));
        assertTrue(ClickHouseHttp.mayPassLater(429, ""));
        assertTrue(!ClickHouseHttp.mayPassLater(500, "Code: 33, e.displayText() = DB::Exception: Cannot read all data."));
        assertTrue(!ClickHouseHttp.mayPassLater(500, "Code: 16, e.displayText() = DB::Exception: No such column zz"));
        assertTrue(!ClickHouseHttp.mayPassLater(404, "Code: 60, Table tickflow.nope doesn't exist."));
        assertTrue(!ClickHouseHttp.mayPassLater(401, "Code: 192, Unknown user nobody"));
        assertTrue(!ClickHouseHttp.mayPassLater(400, ""));
    }

    @Test
    void aRefusedInsertThrowsTheServersMessage() {
        ClickHouseRowBinaryWriter w = writer(1);
        answers.add(new ClickHouseHttp.Response(400, "Code: 33, e.displayText() = Cannot read all data\n"));
        IOException e = assertThrows(IOException.class,
                () -> w.write(new Blobs().rows("trades", 1, new byte[] {5}).bytes(), null));
        assertTrue(e.getMessage().contains("HTTP 400"), e.getMessage());
        assertTrue(e.getMessage().contains("Cannot read all data"), e.getMessage());
    }

    @Test
    void rowsForAnUnknownTableAreAnError() {
        ClickHouseRowBinaryWriter w = writer(10);
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> w.write(new Blobs().rows("bogus", 1, new byte[] {5}).bytes(), null));
        assertTrue(e.getMessage().contains("bogus"), e.getMessage());
    }

    @Test
    void aBarrierDoesNotWaitForInsertsTheyAreTheCheckpointsState() throws Exception {
        inserter = queued::addLast;
        ClickHouseRowBinaryWriter w = writer(1);
        w.write(new Blobs().rows("trades", 1, new byte[] {1}).bytes(), null);
        w.write(new Blobs().rows("trades", 1, new byte[] {2}).bytes(), null);
        assertTrue(posts.isEmpty()); // handed over, not yet sent
        assertEquals(2, w.insertsInFlight());
        assertEquals(0, w.bufferedRows());
        w.flush(false); // before a barrier: returns at once
        List<PendingInsert> state = w.snapshotState(1);
        assertEquals(2, state.size());
        assertEquals("trades", state.get(0).table());
        assertArrayEquals(new byte[] {1}, state.get(0).data());
        assertArrayEquals(new byte[] {2}, state.get(1).data());
        runQueued();
        assertEquals(List.of(), w.snapshotState(2)); // done: nothing left to send again
        assertEquals(2, posts.size());
    }

    @Test
    void theEndOfInputWaitsForEveryInsert() throws Exception {
        inserter = queued::addLast;
        ClickHouseRowBinaryWriter w = writer(1);
        w.write(new Blobs().rows("trades", 1, new byte[] {1}).bytes(), null);
        Thread flusher = new Thread(() -> {
            try {
                w.flush(true);
            } catch (Exception e) {
                throw new RuntimeException(e);
            }
        });
        flusher.start();
        Thread.sleep(50);
        assertTrue(flusher.isAlive());
        runQueued();
        flusher.join(5000);
        assertEquals(0, w.insertsInFlight());
        assertEquals(1, posts.size());
    }

    @Test
    void aRestoredWriterSendsTheCheckpointedInsertsFirst() throws Exception {
        PendingInsert.Serializer serializer = new PendingInsert.Serializer();
        PendingInsert held = new PendingInsert("nbbo", "date, instrument", new byte[] {7, 8}, 2);
        PendingInsert back = serializer.deserialize(
                serializer.getVersion(), serializer.serialize(held));
        assertEquals(held.table(), back.table());
        assertEquals(held.columns(), back.columns());
        assertEquals(held.rows(), back.rows());
        assertArrayEquals(held.data(), back.data());
        assertThrows(IOException.class, () -> serializer.deserialize(99, new byte[0]));

        ClickHouseRowBinaryWriter w = writer(1);
        w.restore(List.of(back));
        w.write(new Blobs().rows("trades", 1, new byte[] {1}).bytes(), null);
        assertEquals(2, posts.size());
        assertEquals("INSERT INTO tickflow.nbbo (date, instrument) FORMAT RowBinary", posts.get(0).query());
        assertArrayEquals(new byte[] {7, 8}, posts.get(0).body());
    }

    @Test
    void waitsForTheOldestInsertWhenTooManyAreQueued() throws Exception {
        inserter = queued::addLast;
        ClickHouseRowBinaryWriter w = writer(1);
        for (int i = 0; i < ClickHouseRowBinaryWriter.MAX_IN_FLIGHT; i++) {
            w.write(new Blobs().rows("trades", 1, new byte[] {(byte) i}).bytes(), null);
        }
        Thread writer = new Thread(() -> {
            try {
                w.write(new Blobs().rows("trades", 1, new byte[] {9}).bytes(), null);
            } catch (Exception e) {
                throw new RuntimeException(e);
            }
        });
        writer.start();
        Thread.sleep(50);
        assertTrue(writer.isAlive());
        queued.removeFirst().run();
        writer.join(5000);
        assertEquals(ClickHouseRowBinaryWriter.MAX_IN_FLIGHT, w.insertsInFlight());
    }

    @Test
    void aFailedInsertFailsTheNextBarrier() {
        inserter = queued::addLast;
        ClickHouseRowBinaryWriter w = writer(1);
        answers.add(new ClickHouseHttp.Response(500, "Code: 33, e.displayText() = Cannot read all data"));
        assertDoesNotThrow(() -> w.write(new Blobs().rows("trades", 1, new byte[] {5}).bytes(), null));
        runQueued();
        IOException e = assertThrows(IOException.class, () -> w.flush(false));
        assertTrue(e.getMessage().contains("Cannot read all data"), e.getMessage());
        assertTrue(!(e instanceof ClickHouseHttp.Unavailable), e.toString());
    }

    @Test
    void waitsWhenTheQueuedRowsAreTooLarge() throws Exception {
        inserter = queued::addLast;
        budget = 1000;
        ClickHouseRowBinaryWriter w = writer(1);
        int half = (int) (budget / 2) + 1;
        w.write(new Blobs().rows("trades", 1, new byte[half]).bytes(), null);
        assertEquals(1, w.insertsInFlight());
        Thread writer = new Thread(() -> {
            try {
                w.write(new Blobs().rows("trades", 1, new byte[half]).bytes(), null);
            } catch (Exception e) {
                throw new RuntimeException(e);
            }
        });
        writer.start();
        Thread.sleep(50);
        assertTrue(writer.isAlive()); // two halves are over the bound: it waits for the first
        queued.removeFirst().run();
        writer.join(5000);
        assertEquals(1, w.insertsInFlight());
    }
}
