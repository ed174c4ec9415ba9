package io.tickflow.flink;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.sun.net.httpserver.HttpServer;
import java.io.IOException;
import java.net.InetSocketAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;

/**
 * ClickHouse outages as the sink meets them over a real loopback socket: a server that accepts
 * connections and never answers (a paused or blackholed ClickHouse), a port nobody listens on,
 * and an HTTP server that stalls, then answers again.
 */
class ClickHouseOutageTest {

    private static final Duration SHORT = Duration.ofMillis(300);

    private final List<Socket> held = Collections.synchronizedList(new ArrayList<>());
    private ServerSocket silent;
    private HttpServer server;

    @AfterEach
    void close() throws IOException {
        for (Socket socket : held) {
            socket.close();
        }
        if (silent != null) {
            silent.close();
        }
        if (server != null) {
            server.stop(0);
        }
    }

    private static ClickHouseHttp http(int port) {
        return new ClickHouseHttp("http://127.0.0.1:" + port, "default", "", SHORT, SHORT);
    }

    @Test
    void aServerThatNeverAnswersIsAnOutageNotAHang() throws Exception {
        silent = new ServerSocket(0, 50, java.net.InetAddress.getLoopbackAddress());
        Thread acceptor = new Thread(() -> {
            try {
                while (true) {
                    held.add(silent.accept()); // accepted, never read, never answered
                }
            } catch (IOException closed) {
                // the test is over
            }
        });
        acceptor.setDaemon(true);
        acceptor.start();
        ClickHouseHttp.Unavailable e = assertThrows(ClickHouseHttp.Unavailable.class,
                () -> http(silent.getLocalPort()).insert("tickflow", "trades", "a", new byte[] {1}, 1, 1));
        assertTrue(e.getMessage().contains("failed twice"), e.getMessage());
    }

    @Test
    void aPortNobodyListensOnIsAnOutage() throws Exception {
        int port;
        try (ServerSocket free = new ServerSocket(0)) {
            port = free.getLocalPort();
        }
        assertThrows(ClickHouseHttp.Unavailable.class,
                () -> http(port).insert("tickflow", "trades", "a", new byte[] {1}, 1, 1));
    }

    @Test
    void aReplicaTakesTheInsertsTheLostServerCannotAndStaysCurrent() throws Exception {
        int lost;
        try (ServerSocket free = new ServerSocket(0)) {
            lost = free.getLocalPort();
        }
        int replica = startServer();
        ClickHouseHttp http = new ClickHouseHttp(
                "http://127.0.0.1:" + lost + ", http://127.0.0.1:" + replica, "default", "", SHORT, SHORT);
        http.insert("tickflow", "trades", "a", new byte[] {1}, 1, 1);
        assertEquals("http://127.0.0.1:" + replica, http.currentUrl());
        http.insert("tickflow", "trades", "a", new byte[] {2}, 1, 1);
        assertEquals(Set.of("\u0001", "\u0002"), Set.copyOf(applied));
        server.stop(0);
        server = null;
        // neither answers: an outage, with each server's failure
        ClickHouseHttp.Unavailable e = assertThrows(ClickHouseHttp.Unavailable.class,
                () -> http.insert("tickflow", "trades", "a", new byte[] {3}, 1, 1));
        assertEquals(1, e.getSuppressed().length);
    }

    /** An HTTP server that records every insert body it applies; stalls while asked to. */
    private final Set<String> applied = Collections.synchronizedSet(new LinkedHashSet<>());
    private volatile CountDownLatch stall = new CountDownLatch(0);

    private int startServer() throws IOException {
        server = HttpServer.create(new InetSocketAddress(java.net.InetAddress.getLoopbackAddress(), 0), 50);
        server.setExecutor(java.util.concurrent.Executors.newCachedThreadPool());
        server.createContext("/", exchange -> {
            byte[] body = exchange.getRequestBody().readAllBytes();
            try {
                stall.await(); // a paused server: the request waits; the client times out
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
            // a request the client gave up on is still applied when the server resumes, like
            // ClickHouse after SIGCONT: the same rows twice, which their identities collapse
            applied.add(new String(body, java.nio.charset.StandardCharsets.ISO_8859_1));
            exchange.sendResponseHeaders(200, -1);
            exchange.close();
        });
        server.start();
        return server.getAddress().getPort();
    }

    private static byte[] blob(int i) {
        return new Blobs().rows("trades", 1, new byte[] {(byte) i, (byte) (i >> 8)}).bytes();
    }

    @Test
    void rowsWaitThroughAStallWithoutBlockingTheWriterThenArriveInOrder() throws Exception {
        int port = startServer();
        stall = new CountDownLatch(1);
        ClickHouseRowBinaryWriter w = new ClickHouseRowBinaryWriter(
                http(port), "tickflow", Map.of("trades", "a"), 1, 100, null, null, null, 1 << 20, 10, 50);
        try {
            for (int i = 0; i < 40; i++) {
                w.write(blob(i), null); // returns: the budget is far from full
            }
            w.flush(false); // a barrier does not wait either
            List<PendingInsert> state = w.snapshotState(1);
            assertEquals(40, state.size()); // every row is in the checkpoint while it waits
            long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(30);
            while (w.retries() == 0 && System.nanoTime() < deadline) {
                Thread.sleep(20);
            }
            assertTrue(w.retries() > 0, "the stalled insert was retried");
            stall.countDown(); // ClickHouse resumes
            w.flush(true);
            assertEquals(0, w.insertsInFlight());
            List<String> expected = new ArrayList<>();
            for (int i = 0; i < 40; i++) {
                expected.add(new String(new byte[] {(byte) i, (byte) (i >> 8)}, java.nio.charset.StandardCharsets.ISO_8859_1));
            }
            assertEquals(expected, new ArrayList<>(applied)); // each once (distinct), in order
        } finally {
            w.close();
        }
    }

    @Test
    void aFullBudgetBackpressuresUntilClickHouseAnswersAgain() throws Exception {
        int port = startServer();
        stall = new CountDownLatch(1);
        // each insert is 2 bytes of rows: 3 fit in a budget of 6
        ClickHouseRowBinaryWriter w = new ClickHouseRowBinaryWriter(
                http(port), "tickflow", Map.of("trades", "a"), 1, 100, null, null, null, 6, 10, 50);
        try {
            for (int i = 0; i < 3; i++) {
                w.write(blob(i), null);
            }
            CountDownLatch wrote = new CountDownLatch(1);
            Thread writer = new Thread(() -> {
                try {
                    w.write(blob(3), null);
                    wrote.countDown();
                } catch (Exception e) {
                    throw new RuntimeException(e);
                }
            });
            writer.start();
            assertTrue(!wrote.await(500, TimeUnit.MILLISECONDS), "a full budget makes the writer wait");
            stall.countDown();
            assertTrue(wrote.await(30, TimeUnit.SECONDS));
            w.flush(true);
            assertEquals(4, applied.size());
        } finally {
            w.close();
        }
    }
}
