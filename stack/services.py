"""The Component abstraction every local-stack service implements (Kafka, Redis, ClickHouse,
Flink): where it keeps its files, which ports it owns, how to install, configure, launch, probe
and stop it. Orchestration across components lives in ``stack.manager``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Generic, TypeVar

from stack.system import (
    StackError,
    listening_pid,
    pid_alive,
    port_open,
    port_owner,
    process_belongs_to,
    read_pids,
    tail,
    terminate,
    wait_until,
)
from tickflow.config import Settings

LOOPBACK = "127.0.0.1"

NodeT = TypeVar("NodeT")


@dataclass(frozen=True)
class RestartHold:
    """Why the supervisor waits before it starts a lost component again, and how long at most:
    ``what`` (the process lost) is started ``most_s`` after its loss was first seen, or as soon
    as the component no longer asks for the hold."""

    what: str
    most_s: float
    until: str
    # done once when the loss is first seen, to hasten what the hold waits for; says what it did
    on_loss: Callable[[], str] | None = None


class Component(ABC):
    """One service of the local stack, with its data, logs and pid files under
    ``<state_dir>/<name>/``."""

    name: ClassVar[str]
    # generous: two JVMs starting together on two cores take a while
    start_timeout_s: ClassVar[float] = 180.0
    stop_timeout_s: ClassVar[float] = 30.0
    # processes a healthy instance runs (Flink: JobManager + TaskManager)
    process_count: ClassVar[int] = 1
    # whether `launch` starts only the processes that are not running (a cluster of nodes),
    # so a partly running instance is completed instead of restarted whole
    completes_partially: ClassVar[bool] = False

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @classmethod
    def enabled(cls, settings: Settings) -> bool:
        """Whether this configuration runs the component at all (HA-only ones: not by default)."""
        return True

    @property
    def home(self) -> Path:
        return self.settings.state_dir / self.name

    @property
    def pid_file(self) -> Path:
        return self.home / f"{self.name}.pid"

    @abstractmethod
    def ports(self) -> dict[str, int]:
        """Port label -> TCP port on 127.0.0.1 that this component listens on."""

    def host_of(self, label: str) -> str:
        """Where the port of ``label`` listens: loopback, unless the component's processes are
        hosts of their own (``stack.netns``)."""
        return LOOPBACK

    @property
    @abstractmethod
    def log_file(self) -> Path:
        """The log to read first when the component misbehaves."""

    def log_files(self) -> list[Path]:
        """Every log the component writes (for ``tickflow stack logs``)."""
        return [self.log_file]

    def install(self) -> None:  # noqa: B027 - optional hook, most components need no install
        """Make binaries/jars available (apt-get, Maven); cheap when already there."""

    @abstractmethod
    def configure(self) -> None:
        """Render configuration files and create directories under home."""

    @abstractmethod
    def launch(self) -> None:
        """Start the process(es) in the background and record their pids; do not wait."""

    @abstractmethod
    def answers(self) -> bool:
        """One quick health probe: does the service answer a real request?"""

    def launch_after(self) -> tuple[str, ...]:
        """Components that must answer before this one is launched, when the same ``up``
        starts them too (empty: it launches at once, beside the others)."""
        return ()

    def ready(self, log: Callable[[str], None]) -> None:  # noqa: B027 - optional hook
        """Once it answers after this stack started it: anything it needs before use."""

    def details(self) -> str:
        """Extra status text (e.g. Flink slots); empty by default."""
        return ""

    def pid_files(self) -> list[Path]:
        return [self.pid_file]

    def pids(self) -> list[int]:
        """Live pids of processes this stack started (stale or foreign pids are ignored)."""
        pids: list[int] = []
        for pid_file in self.pid_files():
            pids += [
                pid
                for pid in read_pids(pid_file)
                if pid_alive(pid) and process_belongs_to(pid, self.home)
            ]
        return pids

    def ensure_ports_free(self) -> None:
        """Fail with a clear message when a port is taken by something we did not start (a
        node of this component that still runs, in a cluster short of one, keeps its ports)."""
        own = set(self.pids())
        for label, port in self.ports().items():
            if port_open(LOOPBACK, port) and not (own and listening_pid(port) in own):
                owner = port_owner(port) or "another process"
                raise StackError(
                    f"{self.name}: {label} port {port} on {LOOPBACK} is already in use by "
                    f"{owner}, which `tickflow stack` did not start. Stop it, or change the "
                    f"port in config/tickflow.yaml (or TICKFLOW__... environment overrides)."
                )

    def restart_hold(self) -> RestartHold | None:
        """Asked by the supervisor each round while the component is short of a process: wait
        before starting it again (None: start it now)."""
        return None

    def launched_answer(self) -> bool:
        """Whether what ``launch`` started answers (``wait_healthy`` waits for it): the whole
        component, unless it ``completes_partially``."""
        return self.answers()

    def wait_healthy(self, timeout_s: float | None = None) -> None:
        timeout_s = self.start_timeout_s if timeout_s is None else timeout_s
        last_error: list[Exception] = []

        def probe() -> bool:
            try:
                return self.launched_answer()
            except Exception as error:  # the probe's own failure explains the timeout
                last_error[:] = [error]
                return False

        if wait_until(probe, timeout_s, interval=0.5):
            return
        alive = "running" if self.pids() else "not running (it exited)"
        error = (
            f" (last probe: {type(last_error[0]).__name__}: {last_error[0]})" if last_error else ""
        )
        raise self.failure(
            f"did not answer within {timeout_s:.0f} s{error}; the process is {alive}"
        )

    def failure(self, what: str) -> StackError:
        """An error naming the component, its ports and the log to read, with the log's tail."""
        ports = ", ".join(f"{label} {port}" for label, port in self.ports().items())
        logs = [path for path in self.log_files() if path.exists()] or [self.log_file]
        text = [f"{self.name} ({ports}): {what}. Read {', '.join(map(str, logs))}"]
        for path in logs:
            last = tail(path, 20)
            if last:
                text.append(f"--- last lines of {path} ---\n{last}")
        return StackError("\n".join(text))

    def stop(self) -> list[int]:
        """Stop exactly the processes we started (SIGTERM, deadline, SIGKILL); return their pids."""
        pids = self.pids()
        terminate(pids, self.stop_timeout_s)
        for pid_file in self.pid_files():
            pid_file.unlink(missing_ok=True)
        return pids


class Cluster(Component, Generic[NodeT]):
    """A component of several nodes (Kafka, ZooKeeper). ``launch`` starts only the nodes that
    are not running, so a cluster short of one is completed while the rest keep serving, and
    waits only for those."""

    completes_partially = True

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._launched: list[NodeT] = []  # by the last ``launch``

    @property
    @abstractmethod
    def members(self) -> list[NodeT]:
        """Every node a healthy cluster runs, one process each."""

    @abstractmethod
    def node_running(self, node: NodeT) -> bool:
        """Whether ``node``'s process runs (a stale pid reused by another process does not)."""

    @abstractmethod
    def launch_node(self, node: NodeT) -> None:
        """Start ``node``'s process in the background and record its pid; do not wait."""

    @abstractmethod
    def nodes_answer(self, nodes: list[NodeT]) -> bool:
        """Whether each of ``nodes`` answers a real request."""

    @property
    def process_count(self) -> int:  # type: ignore[override]
        return len(self.members)

    def launch(self) -> None:
        self._launched = [node for node in self.members if not self.node_running(node)]
        for node in self._launched:
            self.launch_node(node)

    def launched_answer(self) -> bool:
        """The nodes ``launch`` started answer. A node of the others lost meanwhile is not
        waited for, or a supervisor's round would hang on it until the timeout: the next
        round starts it."""
        return self.nodes_answer(self._launched or self.members)

    def answers(self) -> bool:
        # every node: a cluster short of one is not up yet
        return self.nodes_answer(self.members)
