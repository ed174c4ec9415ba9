"""A process cut off the network where it runs (``stack.cutoff``): started in a cgroup of its
own, it answers; cut off, a connection to it hangs (no refusal, no reset); healed, it answers
again. Needs root and nftables (CI runs as root)."""

from __future__ import annotations

import functools
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator

import pytest

from stack import cutoff
from stack.system import ensure_packages, wait_until

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def server() -> Iterator[tuple[str, int]]:
    if os.geteuid() != 0:
        pytest.skip("cutting a process off the network needs root")
    ensure_packages(cutoff.NFT_PACKAGES)
    name = f"test-{uuid.uuid4().hex[:8]}"
    cutoff.ensure(name)
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=functools.partial(cutoff.join, name),
    )
    try:
        assert wait_until(lambda: _answers(port), 30, 0.1)
        yield name, port
    finally:
        cutoff.heal(name)
        process.kill()
        process.wait()
        cutoff.remove(name)


def _answers(port: int, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=timeout) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _first_byte(port: int, timeout: float) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
        connection.sendall(b"GET / HTTP/1.0\r\n\r\n")
        return connection.recv(1)


def test_a_process_cut_off_goes_silent_and_answers_once_healed(server: tuple[str, int]) -> None:
    name, port = server
    pid = int((cutoff.cgroup_dir(name) / "cgroup.procs").read_text().split()[0])
    assert pid > 0
    cutoff.cut(name)
    cutoff.cut(name)  # idempotent
    assert cutoff.cut_off(name)
    began = time.monotonic()
    with pytest.raises(TimeoutError):  # a refusal or a reset would fail at once
        _first_byte(port, timeout=1.5)
    assert time.monotonic() - began >= 1.0
    cutoff.heal(name)
    assert not cutoff.cut_off(name)
    assert _answers(port)


SENDER = """
import socket, sys
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen()
print(listener.getsockname()[1], flush=True)
connection, _ = listener.accept()
sys.stdin.readline()  # told to send, while cut off
connection.sendall(b"stale")
print("sent", flush=True)
sys.stdin.readline()
"""


@pytest.mark.parametrize("reset", [False, True], ids=["killed", "killed-and-reset"])
def test_what_a_process_sent_while_cut_off_arrives_after_the_heal_unless_reset(
    reset: bool,
) -> None:
    """A JobManager cut off the network queues calls that the kernel keeps retransmitting, its
    process killed or not: the peer gets them once the link is back (the stale disconnects
    that restarted the job under the new leader). ``reset_connections`` after the kill
    destroys those sockets: nothing arrives."""
    if os.geteuid() != 0:
        pytest.skip("cutting a process off the network needs root")
    ensure_packages(cutoff.NFT_PACKAGES)
    name = f"test-{uuid.uuid4().hex[:8]}"
    cutoff.ensure(name)
    sender = subprocess.Popen(
        [sys.executable, "-c", SENDER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=functools.partial(cutoff.join, name),
    )
    try:
        assert sender.stdin is not None and sender.stdout is not None
        port = int(sender.stdout.readline())
        with socket.create_connection(("127.0.0.1", port), timeout=5) as peer:
            cutoff.cut(name)
            sender.stdin.write("send\n")
            sender.stdin.flush()
            assert sender.stdout.readline().strip() == "sent"
            time.sleep(0.5)  # queued, retransmitted into the cut
            sender.kill()
            sender.wait(10)
            if reset:
                cutoff.reset_connections(name)
            cutoff.heal(name)
            peer.settimeout(6.0)
            try:
                received = peer.recv(16)
            except TimeoutError:
                received = b""
        assert received == (b"" if reset else b"stale")
    finally:
        cutoff.heal(name)
        sender.kill()
        sender.wait(10)
        cutoff.remove(name)
