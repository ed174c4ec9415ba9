package io.tickflow.flink;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.Closeable;
import java.io.File;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.nio.file.Path;
import java.util.List;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.TimeUnit;
import org.apache.flink.shaded.curator5.org.apache.curator.framework.CuratorFramework;
import org.apache.flink.shaded.curator5.org.apache.curator.framework.CuratorFrameworkFactory;
import org.apache.flink.shaded.curator5.org.apache.curator.framework.recipes.leader.LeaderLatch;
import org.apache.flink.shaded.curator5.org.apache.curator.framework.recipes.leader.LeaderLatchListener;
import org.apache.flink.shaded.curator5.org.apache.curator.framework.state.ConnectionState;
import org.apache.flink.shaded.curator5.org.apache.curator.retry.RetryOneTime;
import org.apache.flink.shaded.zookeeper3.org.apache.zookeeper.server.ServerCnxnFactory;
import org.apache.flink.shaded.zookeeper3.org.apache.zookeeper.server.ZooKeeperServer;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * The JobManagers' leader election (Flink's LeaderLatch, on the Curator that Flink bundles) against
 * a real ZooKeeper server, in process. The leader's client stops hearing ZooKeeper while ZooKeeper
 * still hears it, as when a ZooKeeper leader's kill leaves the clients reconnecting while the new
 * quorum renews their sessions: after the session timeout spent disconnected, Curator declares
 * the session lost, although ZooKeeper still holds it and the leader's node. The old leader must
 * not lead again on that node; the standby leads once ZooKeeper expires it. The Curator 5.4.0
 * that Flink bundles let both lead (CURATOR-696); the patched class in this module must not.
 */
class LeaderLatchSessionTest {

    private static final int SESSION_TIMEOUT_MS = 2000;
    private static final long WAIT_S = 30;

    @TempDir
    Path data;

    private ServerCnxnFactory connections;
    private DeafeningProxy proxy;
    private CuratorFramework client0;
    private CuratorFramework client1;
    private LeaderLatch latch0;
    private LeaderLatch latch1;

    @BeforeEach
    void startZooKeeper() throws Exception {
        File dir = data.toFile();
        ZooKeeperServer server = new ZooKeeperServer(dir, dir, 100);
        connections = ServerCnxnFactory.createFactory(
                new InetSocketAddress(InetAddress.getLoopbackAddress(), 0), 60);
        connections.startup(server);
        proxy = new DeafeningProxy(connections.getLocalPort());
    }

    @AfterEach
    void stop() throws Exception {
        for (LeaderLatch latch : new LeaderLatch[] {latch1, latch0}) {
            if (latch != null && latch.getState() == LeaderLatch.State.STARTED) {
                latch.close();
            }
        }
        for (CuratorFramework client : new CuratorFramework[] {client1, client0}) {
            if (client != null) {
                client.close();
            }
        }
        proxy.close();
        connections.shutdown();
    }

    private static CuratorFramework client(int port) {
        CuratorFramework client = CuratorFrameworkFactory.builder()
                .connectString("127.0.0.1:" + port)
                .sessionTimeoutMs(SESSION_TIMEOUT_MS)
                .connectionTimeoutMs(SESSION_TIMEOUT_MS)
                .retryPolicy(new RetryOneTime(100))
                .build();
        client.start();
        return client;
    }

    private static LeaderLatch latch(CuratorFramework client, String id, BlockingQueue<String> events)
            throws Exception {
        LeaderLatch latch = new LeaderLatch(client, "/leader/latch", id);
        latch.addListener(new LeaderLatchListener() {
            @Override
            public void isLeader() {
                events.add("gained");
            }

            @Override
            public void notLeader() {
                events.add("lost");
            }
        });
        latch.start();
        return latch;
    }

    @Test
    void aLeaderWhoseSessionCuratorDeclaredLostDoesNotLeadBesideTheStandby() throws Exception {
        BlockingQueue<String> events0 = new LinkedBlockingQueue<>();
        BlockingQueue<String> events1 = new LinkedBlockingQueue<>();
        BlockingQueue<ConnectionState> states0 = new LinkedBlockingQueue<>();
        client0 = client(proxy.port());
        client0.getConnectionStateListenable().addListener((client, state) -> states0.add(state));
        latch0 = latch(client0, "jobmanager-0", events0);
        assertEquals("gained", events0.poll(WAIT_S, TimeUnit.SECONDS));

        client1 = client(connections.getLocalPort());
        latch1 = latch(client1, "jobmanager-1", events1);
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(WAIT_S);
        while (latch0.getParticipants().size() < 2 && System.nanoTime() < deadline) {
            Thread.sleep(20);
        }
        assertEquals(2, latch0.getParticipants().size(), "the standby's node is in the latch");
        assertTrue(latch0.hasLeadership());
        assertFalse(latch1.hasLeadership());

        proxy.deaf = true;
        deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(WAIT_S);
        ConnectionState state;
        do {
            state = states0.poll(WAIT_S, TimeUnit.SECONDS);
        } while (state != ConnectionState.LOST && state != null && System.nanoTime() < deadline);
        assertEquals(ConnectionState.LOST, state, "Curator declared the leader's session lost");
        assertEquals("lost", events0.poll(WAIT_S, TimeUnit.SECONDS), "the leader stepped down");
        proxy.deaf = false;

        // ZooKeeper still holds the old session; it expires it within the session timeout of the
        // last reconnect attempt it heard, and the standby's watch on that node fires
        deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(WAIT_S);
        while (!latch1.hasLeadership() && System.nanoTime() < deadline) {
            assertFalse(latch0.hasLeadership() && latch1.hasLeadership(), "two leaders");
            Thread.sleep(5);
        }
        assertTrue(latch1.hasLeadership(), "the standby leads");
        // and stays the only leader, the old leader contending on a node of its new session
        deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(2 * SESSION_TIMEOUT_MS);
        while (System.nanoTime() < deadline) {
            assertFalse(latch0.hasLeadership(), "the old leader leads beside the standby");
            Thread.sleep(5);
        }
        assertTrue(latch1.hasLeadership());
        assertNotNull(latch0.getOurPath(), "the old leader contends again");
    }

    /**
     * A loopback TCP proxy that, while deaf, forwards what its clients send and drops what the
     * server answers: ZooKeeper hears the client (and renews its session), the client hears nothing.
     */
    private static final class DeafeningProxy implements Closeable {
        volatile boolean deaf;
        private final int target;
        private final ServerSocket listener;
        private final List<Socket> sockets = new CopyOnWriteArrayList<>();

        DeafeningProxy(int target) throws IOException {
            this.target = target;
            this.listener = new ServerSocket(0, 50, InetAddress.getLoopbackAddress());
            Thread acceptor = new Thread(this::accept, "proxy-accept");
            acceptor.setDaemon(true);
            acceptor.start();
        }

        int port() {
            return listener.getLocalPort();
        }

        private void accept() {
            try {
                while (true) {
                    Socket client = listener.accept();
                    Socket server = new Socket(InetAddress.getLoopbackAddress(), target);
                    sockets.add(client);
                    sockets.add(server);
                    pump(client, server, false);
                    pump(server, client, true);
                }
            } catch (IOException closed) {
                // the listener was closed
            }
        }

        private void pump(Socket from, Socket to, boolean replies) {
            Thread thread = new Thread(() -> {
                byte[] buffer = new byte[8192];
                try (InputStream in = from.getInputStream(); OutputStream out = to.getOutputStream()) {
                    int read;
                    while ((read = in.read(buffer)) >= 0) {
                        if (!(replies && deaf)) {
                            out.write(buffer, 0, read);
                            out.flush();
                        }
                    }
                } catch (IOException closed) {
                    // either side closed
                } finally {
                    closeQuietly(from);
                    closeQuietly(to);
                }
            }, "proxy-pump");
            thread.setDaemon(true);
            thread.start();
        }

        private static void closeQuietly(Socket socket) {
            try {
                socket.close();
            } catch (IOException ignored) {
                // already closed
            }
        }

        @Override
        public void close() throws IOException {
            listener.close();
            for (Socket socket : sockets) {
                closeQuietly(socket);
            }
        }
    }
}
