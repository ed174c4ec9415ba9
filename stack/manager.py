"""Bring the whole local stack up or down, and report its status."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from stack.blackbox import Blackbox
from stack.clickhouse import ClickHouse, ClickHouseReplica
from stack.flink import Flink
from stack.kafka import Kafka
from stack.prometheus import Prometheus
from stack.redis_exporter import RedisExporter
from stack.redis_server import Redis, RedisReplica, RedisSentinels
from stack.registry import SchemaRegistry
from stack.secrets import ensure_secrets
from stack.services import Component
from stack.system import StackError
from stack.topics import ensure_topics
from stack.zookeeper import ZooKeeper
from tickflow.config import Settings

# start order; stop runs in reverse
COMPONENT_TYPES: tuple[type[Component], ...] = (
    Kafka,
    Redis,
    RedisReplica,
    RedisSentinels,
    ZooKeeper,  # before ClickHouse: replicated tables need it
    ClickHouse,
    ClickHouseReplica,
    Flink,
    Blackbox,
    RedisExporter,
    Prometheus,
    SchemaRegistry,
)
COMPONENT_NAMES = tuple(c.name for c in COMPONENT_TYPES)
# how long an already-running but silent component gets before it is restarted
SILENT_GRACE_S = 30.0

Log = Callable[[str], None]


def components(
    settings: Settings, names: Iterable[str] | None = None, running_too: bool = False
) -> list[Component]:
    """Component objects in start order, optionally only the named ones: those this
    configuration runs (the HA-only ones with the HA profile), and with ``running_too`` any
    other of ours still running (``down`` stops them whatever the profile now says)."""
    wanted = set(names or COMPONENT_NAMES)
    unknown = wanted - set(COMPONENT_NAMES)
    if unknown:
        raise StackError(f"unknown component(s) {sorted(unknown)}; known: {list(COMPONENT_NAMES)}")
    selected = [cls(settings) for cls in COMPONENT_TYPES if cls.name in wanted]
    out = [c for c in selected if c.enabled(settings) or (running_too and c.pids())]
    if names is not None and not running_too:
        off = sorted(c.name for c in selected if c not in out)
        if off:
            raise StackError(f"{', '.join(off)}: not in this configuration (HA profile: --ha)")
    return out


# ports a probe does not try: metrics endpoints (scraped anyway), and ports only one node of
# a cluster listens on at a time (ZooKeeper's peer port: the leader's; Flink's RPC with HA)
UNPROBED_PORT_LABELS = ("metrics", "peer", "election", "rpc")


def probe_targets(settings: Settings) -> dict[str, list[str]]:
    """Per component, the addresses (``host:port``) the blackbox exporter tries
    (``ComponentDown``)."""
    return {
        c.name: [
            f"{c.host_of(label)}:{port}"
            for label, port in c.ports().items()
            if not any(word in label for word in UNPROBED_PORT_LABELS)
        ]
        for c in components(settings)
        if c.name not in (Blackbox.name, Prometheus.name)
    }


def _safe_answers(component: Component) -> bool:
    try:
        return component.answers()
    except Exception:
        return False


def _needs_start(component: Component, log: Log) -> bool:
    """False when our own process already answers; restarts a silent or half-started one."""
    pids = component.pids()
    if not pids:
        return True
    if len(pids) < component.process_count:
        # e.g. a TaskManager died: the JobManager still lists it until a heartbeat times out
        running = f"{len(pids)} of {component.process_count}"
        if component.completes_partially:  # a cluster: start the missing nodes alone
            log(f"{component.name}: only {running} processes are running; starting the rest")
            return True
        log(f"{component.name}: only {running} processes are running; restarting")
        component.stop()
        return True
    if _safe_answers(component):
        log(f"{component.name}: already running (pid {', '.join(map(str, component.pids()))})")
        return False
    try:
        component.wait_healthy(SILENT_GRACE_S)  # maybe still starting from an earlier `up`
        log(f"{component.name}: already running")
        return False
    except StackError:
        log(f"{component.name}: running but not answering; restarting it")
        component.stop()
        return True


def up(settings: Settings, names: Iterable[str] | None = None, log: Log = print) -> list[str]:
    """Start the components that are not running, wait until all answer, create topics.

    Returns the names of the components this call started. Idempotent. The stack's
    credentials are generated first when missing (``stack.secrets``).
    """
    settings = ensure_secrets(settings, log)
    selected = components(settings, names)
    to_start = [c for c in selected if _needs_start(c, log)]
    for component in to_start:
        component.ensure_ports_free()
    for component in to_start:  # apt-get and Maven first: slow, and needs no running service
        component.install()
    launched_at: dict[str, float] = {}
    answering: set[str] = set()
    starting = {c.name for c in to_start}

    def launch_unblocked() -> None:
        for component in to_start:
            blocked = set(component.launch_after()) & (starting - answering)
            if component.name in launched_at or blocked:
                continue
            component.configure()
            launched_at[component.name] = time.monotonic()
            component.launch()
            log(f"{component.name}: launched, waiting for it to answer")

    # all launched before waiting (the JVMs start in parallel), except those that need
    # another one answering first: they launch as soon as it does, which is earlier in the
    # start order
    launch_unblocked()
    for component in to_start:
        component.wait_healthy()
        took = time.monotonic() - launched_at[component.name]
        log(f"{component.name}: answering on {_ports_text(component)} ({took:.1f} s after launch)")
        answering.add(component.name)
        launch_unblocked()
    for component in to_start:
        component.ready(log)
    if any(c.name == Kafka.name for c in selected):
        created = ensure_topics(settings)
        if created:
            log(f"kafka: created topics {', '.join(created)}")
    if any(c.name == SchemaRegistry.name for c in selected):
        registered = register_schemas(settings)
        if registered:
            log(f"registry: registered {', '.join(registered)}")
    return [c.name for c in to_start]


def register_schemas(settings: Settings) -> list[str]:
    """Each topic's subject with its rule and committed schema (``tickflow schemas register``);
    the subjects that got a new version."""
    from schemas.registry import RegistryClient, RegistryError, register_all

    try:
        done = register_all(RegistryClient(settings.registry), settings)
    except RegistryError as error:
        raise StackError(f"registry: {error}") from None
    return [f"{r.subject} (id {r.schema_id})" for r in done if r.new]


def down(settings: Settings, names: Iterable[str] | None = None, log: Log = print) -> None:
    """Stop exactly the processes the stack started, in reverse start order."""
    for component in reversed(components(settings, names, running_too=True)):
        stopped = component.stop()
        if stopped:
            log(f"{component.name}: stopped pid {', '.join(map(str, stopped))}")
        else:
            log(f"{component.name}: not running")


@dataclass(frozen=True)
class ComponentStatus:
    name: str
    ports: str
    pids: str
    answers: bool
    details: str


def _ports_text(component: Component) -> str:
    return ", ".join(f"{label} {port}" for label, port in component.ports().items())


def status(settings: Settings) -> list[ComponentStatus]:
    rows = []
    for component in components(settings):
        answers = _safe_answers(component)
        rows.append(
            ComponentStatus(
                name=component.name,
                ports=_ports_text(component),
                pids=",".join(map(str, component.pids())) or "-",
                answers=answers,
                details=component.details() if answers else "",
            )
        )
    return rows


def stack_answers(settings: Settings, names: Iterable[str] | None = None) -> bool:
    """Whether every (named) component answers, whoever started it."""
    return all(_safe_answers(c) for c in components(settings, names))
