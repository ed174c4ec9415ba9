"""Outage injection for the failure drills (``tests/integration/test_outages.py``): a stack
component paused (SIGSTOP: it keeps its sockets and answers nothing) or stopped, and a TCP
proxy that forwards between a client and a server until told to blackhole: from then on it
accepts connections and swallows what they send, never answering, as a network that drops
packets does. Real processes and sockets; nothing here imitates a server.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import threading
from collections.abc import Iterator

from stack import manager
from tickflow.config import Settings


def component_pids(settings: Settings, name: str) -> list[int]:
    """The live processes of a stack component (``kafka``, ``redis``, ``clickhouse``, ...)."""
    pids = manager.components(settings, [name])[0].pids()
    if not pids:
        raise RuntimeError(f"{name}: not running")
    return pids


@contextlib.contextmanager
def paused(settings: Settings, name: str) -> Iterator[list[int]]:
    """SIGSTOP the component for the block, SIGCONT after it (whatever happens in it)."""
    pids = component_pids(settings, name)
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield pids
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


@contextlib.contextmanager
def stopped(settings: Settings, name: str) -> Iterator[None]:
    """The component stopped for the block, started again (and answering) after it."""
    manager.down(settings, [name], log=lambda _line: None)
    try:
        yield
    finally:
        manager.up(settings, [name], log=lambda _line: None)


class TcpProxy:
    """Forwards every connection on ``127.0.0.1:port`` to ``target`` until ``blackhole()``:
    then connections are still accepted, but nothing is forwarded either way and nothing is
    answered (open connections go silent too); ``restore()`` forwards new connections again.
    One thread, a selector; for drills, not for throughput."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ, None)
        self._peers: dict[socket.socket, socket.socket | None] = {}  # None: swallowed
        self._blackholed = threading.Event()
        self._stop = threading.Event()
        self.accepted = 0
        self.swallowed = 0  # connections accepted while blackholed
        self._thread = threading.Thread(target=self._run, name="tcp-proxy", daemon=True)
        self._thread.start()

    def blackhole(self) -> None:
        """From now on: accept, read and drop; never answer (open connections included)."""
        self._blackholed.set()

    def restore(self) -> None:
        """Forward again. Connections that were swallowed stay silent: their clients time out
        and reconnect, as after a real network fault."""
        self._blackholed.clear()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for sock in list(self._peers):
            self._drop(sock)
        self._selector.close()
        self._listener.close()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select(timeout=0.1):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self._listener:
                    self._accept()
                else:
                    self._forward(sock)

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        self.accepted += 1
        server: socket.socket | None = None
        if self._blackholed.is_set():
            self.swallowed += 1
        else:
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                return
            server.setblocking(False)
            self._peers[server] = client
            self._selector.register(server, selectors.EVENT_READ, None)
        client.setblocking(False)
        self._peers[client] = server
        self._selector.register(client, selectors.EVENT_READ, None)

    def _forward(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        peer = self._peers.get(sock)
        if not data:
            self._drop(sock)
            if peer is not None:
                self._drop(peer)
            return
        if peer is None or self._blackholed.is_set():
            return  # swallowed: read, so the sender never blocks, and never answered
        try:
            peer.setblocking(True)
            peer.sendall(data)
            peer.setblocking(False)
        except OSError:
            self._drop(sock)
            self._drop(peer)

    def _drop(self, sock: socket.socket) -> None:
        self._peers.pop(sock, None)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(sock)
        sock.close()
