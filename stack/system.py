"""Operating-system helpers for the local stack: packages, ports, processes and log tails."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

APT_ENV = {"DEBIAN_FRONTEND": "noninteractive", "NEEDRESTART_MODE": "a"}


class StackError(RuntimeError):
    """A stack component could not be installed, started, checked or stopped."""


_apt_index_fresh = False


def _privileged(argv: list[str]) -> list[str]:
    # CI runners are not root but have password-less sudo
    if os.geteuid() == 0:
        return argv
    sudo = shutil.which("sudo")
    if sudo is None:
        raise StackError(f"need root (or sudo) to run: {' '.join(argv)}")
    return [sudo, "-n", "env", *(f"{k}={v}" for k, v in APT_ENV.items()), *argv]


def _run_apt(args: list[str]) -> None:
    argv = _privileged(["apt-get", *args])
    env = {**os.environ, **APT_ENV}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise StackError(f"`{' '.join(argv)}` failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")


def ensure_packages(binaries: Mapping[str, Iterable[str]]) -> list[str]:
    """apt-get install the packages of every binary (name or absolute path) that is missing.

    Returns the packages installed. ``apt-get update`` runs once per process, before the first
    install, because a fresh CI image has an empty package index.
    """
    global _apt_index_fresh
    missing: list[str] = []
    for binary, packages in binaries.items():
        found = Path(binary).exists() if os.path.isabs(binary) else shutil.which(binary)
        if not found:
            missing += [p for p in packages if p not in missing]
    if not missing:
        return []
    if not _apt_index_fresh:
        _run_apt(["update", "-q"])
        _apt_index_fresh = True
    _run_apt(["install", "-y", "-q", "--no-install-recommends", *missing])
    return missing


def disable_system_services(services: Iterable[str]) -> None:
    """Stop and disable distribution services an apt install may have started on our ports."""
    systemctl = shutil.which("systemctl")
    if systemctl is None or not Path("/run/systemd/system").exists():
        return
    for service in services:
        subprocess.run(
            _privileged([systemctl, "disable", "--now", service]),
            capture_output=True,
            check=False,
        )


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def destroy_sockets(*ss_filter: str) -> None:
    """Destroy this network namespace's TCP sockets that ``ss_filter`` selects (``ss -K``, the
    kernel's sock_destroy): their owners see the connection fail at once, and nothing left
    unsent in them is ever delivered."""
    done = subprocess.run(["ss", "-K", "-t", *ss_filter], capture_output=True, text=True,
                          check=False)  # fmt: skip
    if done.returncode != 0:
        raise StackError(f"`ss -K {' '.join(ss_filter)}` failed: {done.stderr.strip()}")


def _listening_inodes(port: int) -> set[str]:
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            # fields: sl local_address rem_address st ... inode; state 0A is LISTEN
            if (
                len(fields) > 9
                and fields[3] == "0A"
                and int(fields[1].rsplit(":", 1)[1], 16) == port
            ):
                inodes.add(fields[9])
    return inodes


def listening_pid(port: int) -> int | None:
    """The pid of the process listening on a TCP port, when /proc lets us see it."""
    inodes = _listening_inodes(port)
    if not inodes:
        return None
    targets = {f"socket:[{inode}]" for inode in inodes}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fds = list((proc / "fd").iterdir())
        except OSError:
            continue  # gone, or not ours to read
        for fd in fds:
            try:
                # an fd closed meanwhile (a busy process) must not hide the rest of its fds
                if os.readlink(fd) in targets:
                    return int(proc.name)
            except OSError:
                continue
    return None


def port_owner(port: int) -> str | None:
    """'pid N (name)' of the process listening on a TCP port, when /proc lets us see it."""
    if not _listening_inodes(port):
        return None
    pid = listening_pid(port)
    if pid is None:
        return "an unknown process"
    try:
        name = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        name = "gone"
    return f"pid {pid} ({name})"


def pid_alive(pid: int) -> bool:
    """Whether pid is a live (not zombie) process."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def process_belongs_to(pid: int, state_dir: Path) -> bool:
    """Whether pid was started by the stack: its command line or working dir is in state_dir.

    Guards against killing an unrelated process that reused a stale pid.
    """
    marker = str(state_dir)
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        if marker in cmdline:
            return True
        return os.readlink(f"/proc/{pid}/cwd").startswith(marker)
    except OSError:
        return False


def read_pids(pid_file: Path) -> list[int]:
    """Pids listed one per line in a pid file (missing file: none)."""
    try:
        text = pid_file.read_text()
    except FileNotFoundError:
        return []
    return [int(line) for line in text.split() if line.strip().isdigit()]


def spawn_daemon(
    argv: list[str], log_file: Path, cwd: Path, env: Mapping[str, str] | None = None
) -> int:
    """Start argv detached from this process (own session, reparented to init); return its pid.

    The shell backgrounds the command and exits at once, so the daemon outlives the CLI and
    never becomes our zombie; stdout and stderr are appended to log_file.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    script = 'exec "$@" >>"$TICKFLOW_DAEMON_LOG" 2>&1 </dev/null & echo $!'
    shell_env = {**(env or os.environ), "TICKFLOW_DAEMON_LOG": str(log_file)}
    done = subprocess.run(
        ["/bin/sh", "-c", script, "sh", *argv],
        cwd=cwd,
        env=shell_env,
        capture_output=True,
        text=True,
        start_new_session=True,
        check=True,
    )
    return int(done.stdout.strip())


def wait_until(check: Callable[[], bool], timeout: float, interval: float = 0.25) -> bool:
    """Poll check until it returns True or the deadline passes; exceptions count as False."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return True
        except Exception:
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def terminate(pids: Iterable[int], timeout: float) -> list[int]:
    """SIGTERM pids, wait up to timeout for them to exit, then SIGKILL; return the killed ones."""
    live = [pid for pid in pids if pid_alive(pid)]
    for pid in live:
        _signal(pid, signal.SIGTERM)
    wait_until(lambda: not any(_still_alive(pid) for pid in live), timeout)
    killed = [pid for pid in live if pid_alive(pid)]
    for pid in killed:
        _signal(pid, signal.SIGKILL)
    wait_until(lambda: not any(_still_alive(pid) for pid in killed), 10)
    return killed


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _still_alive(pid: int) -> bool:
    """Whether pid is alive; reaps it first if it happens to be our own child."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    return pid_alive(pid)


def tail(path: Path, lines: int = 20) -> str:
    """The last lines of a text file ('' when it does not exist)."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 256 * 1024))
            data = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])
