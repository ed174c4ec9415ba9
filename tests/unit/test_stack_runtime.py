"""Stack manager logic without servers: processes, ports, Maven caching, orchestration, CLI."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from stack import cli, flink, jars, manager, system
from stack.services import Component
from stack.system import StackError
from tickflow.config import Settings, load_settings

pytestmark = pytest.mark.unit


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return dataclasses.replace(
        load_settings(environ={}), state_dir=tmp_path / "state", cache_dir=tmp_path / "cache"
    )


@pytest.fixture
def listener() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- system -----------------------------------------------------------------------------------


def test_port_open_and_owner(listener: int) -> None:
    assert system.port_open("127.0.0.1", listener)
    owner = system.port_owner(listener)
    assert owner is not None and f"pid {os.getpid()}" in owner


def test_closed_port_has_no_owner() -> None:
    port = free_port()
    assert not system.port_open("127.0.0.1", port)
    assert system.port_owner(port) is None


def test_spawn_daemon_then_terminate(tmp_path: Path) -> None:
    script = "import sys, time; print('ready', flush=True); time.sleep(60)"
    pid = system.spawn_daemon([sys.executable, "-c", script], tmp_path / "out.log", cwd=tmp_path)
    assert system.pid_alive(pid)
    assert system.process_belongs_to(pid, tmp_path)  # its working directory
    assert not system.process_belongs_to(pid, tmp_path / "elsewhere")
    assert system.wait_until(lambda: "ready" in system.tail(tmp_path / "out.log"), 10)
    assert system.terminate([pid], timeout=10) == []  # exits on SIGTERM, no SIGKILL needed
    assert not system.pid_alive(pid)


def test_terminate_kills_what_ignores_sigterm(tmp_path: Path) -> None:
    script = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ready', flush=True); time.sleep(60)"
    )
    pid = system.spawn_daemon([sys.executable, "-c", script], tmp_path / "out.log", cwd=tmp_path)
    assert system.wait_until(lambda: "ready" in system.tail(tmp_path / "out.log"), 10)
    assert system.terminate([pid], timeout=0.5) == [pid]
    assert not system.pid_alive(pid)


def test_dead_child_is_not_alive() -> None:
    child = subprocess.Popen(["true"])
    child.wait()
    assert not system.pid_alive(child.pid)


def test_read_pids_and_tail(tmp_path: Path) -> None:
    assert system.read_pids(tmp_path / "missing.pid") == []
    (tmp_path / "x.pid").write_text("12\n34\n\n")
    assert system.read_pids(tmp_path / "x.pid") == [12, 34]
    log = tmp_path / "a.log"
    log.write_text("\n".join(f"line {i}" for i in range(100)))
    assert system.tail(log, 2) == "line 98\nline 99"
    assert system.tail(tmp_path / "none.log") == ""


def test_wait_until_deadline_and_exceptions() -> None:
    calls: list[int] = []

    def flaky() -> bool:
        calls.append(1)
        if len(calls) < 3:
            raise OSError("not yet")
        return True

    assert system.wait_until(flaky, 5, interval=0.01)
    assert not system.wait_until(lambda: False, 0.05, interval=0.01)


def test_ensure_packages_installs_only_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    commands: list[list[str]] = []
    monkeypatch.setattr(system, "_run_apt", lambda args: commands.append(args))
    monkeypatch.setattr(system, "_apt_index_fresh", False)
    assert system.ensure_packages({"sh": ["dash"]}) == []
    assert commands == []
    installed = system.ensure_packages(
        {"no-such-binary-x": ["pkg-a", "pkg-b"], "/no/such": ["pkg-a"]}
    )
    assert installed == ["pkg-a", "pkg-b"]
    assert commands[0][0] == "update"
    assert commands[1][-2:] == ["pkg-a", "pkg-b"]
    system.ensure_packages({"no-such-binary-y": ["pkg-c"]})
    assert [c[0] for c in commands] == ["update", "install", "install"]  # update only once


# -- jars -------------------------------------------------------------------------------------


def fake_maven(monkeypatch: pytest.MonkeyPatch, returncode: int = 0) -> list[list[str]]:
    calls: list[list[str]] = []

    def run(argv: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        calls.append(argv)
        if "package" in argv:  # the project's operators, built from source
            out = Path(next(a for a in argv if a.startswith("-Dops.build.dir=")).split("=", 1)[1])
            out.mkdir(parents=True)
            (out / "tickflow-flink-ops-1.jar").write_bytes(b"ops")
        else:
            out = Path(next(a for a in argv if a.startswith("-DoutputDirectory=")).split("=", 1)[1])
            (out / "flink-sql-connector-kafka-9.9.jar").write_bytes(b"jar")
        return subprocess.CompletedProcess(argv, returncode, "", "maven says no")

    monkeypatch.setattr(jars.subprocess, "run", run)
    monkeypatch.setattr(jars, "ensure_packages", lambda _: [])
    return calls


def test_resolve_runs_maven_once_per_pom(
    monkeypatch: pytest.MonkeyPatch, settings: Settings
) -> None:
    calls = fake_maven(monkeypatch)
    first = jars.flink_connector_jars(settings)
    again = jars.flink_connector_jars(settings)
    assert (
        first
        == again
        == [
            settings.cache_dir / "jars/flink/flink-sql-connector-kafka-9.9.jar",
            settings.cache_dir / "jars/ops/tickflow-flink-ops-1.jar",
        ]
    )
    assert len(calls) == 2  # resolve the connector, build the operators; then nothing
    assert "-DexcludeTransitive=true" in calls[0]
    assert "package" in calls[1] and "-DskipTests=true" in calls[1]


def test_ops_jar_is_rebuilt_when_its_sources_change(
    monkeypatch: pytest.MonkeyPatch, settings: Settings, tmp_path: Path
) -> None:
    calls = fake_maven(monkeypatch)
    module = tmp_path / "jvm"
    (module / "src/main/java").mkdir(parents=True)
    (module / "src/test").mkdir(parents=True)
    (module / "pom.xml").write_text("<project/>")
    source = module / "src/main/java/A.java"
    source.write_text("class A {}")
    jar = jars.tickflow_ops_jar(settings, module)
    (module / "src/test/T.java").write_text("class T {}")  # tests do not change the jar
    assert jars.tickflow_ops_jar(settings, module) == jar
    assert len(calls) == 1
    source.write_text("class A { int x; }")
    assert jars.tickflow_ops_jar(settings, module) == jar
    assert len(calls) == 2
    assert jar.read_bytes() == b"ops"


def test_resolve_again_when_the_pom_changes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls = fake_maven(monkeypatch)
    pom = tmp_path / "x.pom.xml"
    pom.write_text("<project>1</project>")
    jars.resolve(pom, tmp_path / "out")
    pom.write_text("<project>2</project>")
    jars.resolve(pom, tmp_path / "out")
    assert len(calls) == 2
    assert [p.name for p in (tmp_path / "out").iterdir() if p.suffix == ".jar"] == [
        "flink-sql-connector-kafka-9.9.jar"
    ]


def test_maven_failure_is_a_stack_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake_maven(monkeypatch, returncode=1)
    pom = tmp_path / "x.pom.xml"
    pom.write_text("<project/>")
    with pytest.raises(StackError, match="maven says no"):
        jars.resolve(pom, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.glob(".out-*")) == []  # staging dir cleaned up


# -- components and orchestration -------------------------------------------------------------


class FakeComponent(Component):
    """A component whose 'server' is a sleeping Python process and a flag for health."""

    name = "fake"
    start_timeout_s = 5.0
    stop_timeout_s = 5.0
    port: ClassVar[int] = 0
    healthy: ClassVar[bool] = True
    launches: ClassVar[int] = 0

    def ports(self) -> dict[str, int]:
        return {"main": self.port}

    @property
    def log_file(self) -> Path:
        return self.home / "fake.log"

    def configure(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)

    def launch(self) -> None:
        type(self).launches += 1
        self.log_file.write_text("booting\nfatal: something broke\n")
        argv = [sys.executable, "-c", "import time; time.sleep(60)"]
        pid = system.spawn_daemon(argv, self.home / "fake.out", cwd=self.home)
        self.pid_file.write_text(f"{pid}\n")

    def answers(self) -> bool:
        if not self.healthy:
            raise ConnectionRefusedError("nobody home")
        return bool(self.pids())


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[FakeComponent]]:
    monkeypatch.setattr(FakeComponent, "port", free_port())
    monkeypatch.setattr(FakeComponent, "healthy", True)
    monkeypatch.setattr(FakeComponent, "launches", 0)
    monkeypatch.setattr(manager, "COMPONENT_TYPES", (FakeComponent,))
    monkeypatch.setattr(manager, "COMPONENT_NAMES", ("fake",))
    monkeypatch.setattr(manager, "SILENT_GRACE_S", 0.2)
    monkeypatch.setattr(manager, "ensure_topics", lambda _: [])
    yield FakeComponent


def test_up_is_idempotent_and_down_stops_it(fake: type[FakeComponent], settings: Settings) -> None:
    assert manager.up(settings, log=lambda _: None) == ["fake"]
    pids = fake(settings).pids()
    assert len(pids) == 1
    assert manager.up(settings, log=lambda _: None) == []
    assert fake(settings).pids() == pids and fake.launches == 1
    assert manager.stack_answers(settings)
    manager.down(settings, log=lambda _: None)
    assert fake(settings).pids() == [] and not system.pid_alive(pids[0])
    assert not fake(settings).pid_file.exists()


def test_up_restarts_a_silent_component(fake: type[FakeComponent], settings: Settings) -> None:
    manager.up(settings, log=lambda _: None)
    old = fake(settings).pids()
    fake.healthy = False
    with pytest.raises(StackError):
        manager.up(settings, log=lambda _: None)  # restarted, but still silent
    assert fake.launches == 2 and not system.pid_alive(old[0])
    manager.down(settings, log=lambda _: None)


class FakeDependent(FakeComponent):
    """Launched only once ``fake`` answers (as ClickHouse waits on ZooKeeper with HA)."""

    name = "fake-dependent"
    port: ClassVar[int] = 0

    def launch_after(self) -> tuple[str, ...]:
        return (FakeComponent.name,)

    @property
    def log_file(self) -> Path:
        return self.home / "dependent.log"


def test_up_launches_a_component_after_the_one_it_needs_answers(
    fake: type[FakeComponent], settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(FakeDependent, "port", free_port())
    monkeypatch.setattr(manager, "COMPONENT_TYPES", (FakeComponent, FakeDependent))
    monkeypatch.setattr(manager, "COMPONENT_NAMES", ("fake", "fake-dependent"))
    lines: list[str] = []
    assert manager.up(settings, log=lines.append) == ["fake", "fake-dependent"]
    steps = [line.split(" (")[0] for line in lines if line.startswith("fake")]
    assert steps[:3] == [
        "fake: launched, waiting for it to answer",
        f"fake: answering on main {fake.port}",
        "fake-dependent: launched, waiting for it to answer",
    ]
    manager.down(settings, log=lambda _: None)
    # alone, it launches at once: what it needs is not this call's to start
    lines.clear()
    manager.up(settings, ["fake-dependent"], log=lines.append)
    assert lines[0] == "fake-dependent: launched, waiting for it to answer", lines
    manager.down(settings, log=lambda _: None)


def test_health_failure_names_component_port_and_log(
    fake: type[FakeComponent], settings: Settings
) -> None:
    fake.healthy = False
    with pytest.raises(StackError) as raised:
        manager.up(settings, log=lambda _: None)
    message = str(raised.value)
    assert f"fake (main {fake.port})" in message
    assert str(fake(settings).log_file) in message
    assert "fatal: something broke" in message  # the log's tail
    assert "ConnectionRefusedError: nobody home" in message
    manager.down(settings, log=lambda _: None)


def test_port_taken_by_someone_else(
    fake: type[FakeComponent], settings: Settings, listener: int
) -> None:
    fake.port = listener
    with pytest.raises(
        StackError, match=rf"port {listener} .* already in use by pid {os.getpid()}"
    ):
        manager.up(settings, log=lambda _: None)
    assert fake.launches == 0


def test_unknown_component_name(settings: Settings) -> None:
    with pytest.raises(StackError, match="unknown component"):
        manager.components(settings, ["kafka", "etcd"])
    assert [c.name for c in manager.components(settings, ["flink", "kafka"])] == ["kafka", "flink"]


def test_stale_pid_of_a_foreign_process_is_ignored(settings: Settings) -> None:
    component = manager.components(settings, ["redis"])[0]
    component.home.mkdir(parents=True)
    component.pid_file.write_text(f"{os.getpid()}\n")  # alive, but not started by the stack
    assert component.pids() == []


def test_a_running_process_keeps_its_own_port(
    fake: type[FakeComponent], settings: Settings
) -> None:
    """A cluster short of a node checks only the ports nobody of its own listens on."""
    component = fake(settings)
    component.home.mkdir(parents=True)
    code = f"import socket,time; s=socket.socket(); s.bind(('127.0.0.1', {fake.port})); "
    code += "s.listen(); time.sleep(60)"
    pid = system.spawn_daemon([sys.executable, "-c", code], component.home / "x.out",
                              cwd=component.home)  # fmt: skip
    try:
        assert system.wait_until(lambda: system.port_open("127.0.0.1", fake.port), 10, 0.05)
        with pytest.raises(StackError, match="already in use"):
            component.ensure_ports_free()  # not ours yet
        component.pid_file.write_text(f"{pid}\n")
        component.ensure_ports_free()  # ours: its node still runs
    finally:
        system.terminate([pid], 5)


def test_taskmanager_pids_follow_the_live_processes(settings: Settings) -> None:
    sleepers = [
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) for _ in range(2)
    ]
    pid_file = flink.taskmanager_pid_file(settings)
    pid_file.parent.mkdir(parents=True)
    pid_file.write_text("".join(f"{p.pid}\n" for p in sleepers) + "999999999\n")
    try:
        assert flink.taskmanager_pids(settings) == [p.pid for p in sleepers]
        killed = flink.kill_taskmanager(settings, sleepers[0].pid)
        assert killed == sleepers[0].pid and sleepers[0].wait(5) == -9
        # the dead and the stale lines go: the daemon script counts every line as running
        assert pid_file.read_text() == f"{sleepers[1].pid}\n"
        with pytest.raises(StackError, match="not a TaskManager"):
            flink.kill_taskmanager(settings, os.getpid())
        assert flink.kill_taskmanager(settings) == sleepers[1].pid  # the newest by default
        sleepers[1].wait(5)
        with pytest.raises(StackError, match="no TaskManager"):
            flink.kill_taskmanager(settings)
    finally:
        for sleeper in sleepers:
            sleeper.kill()
            sleeper.wait()


# -- CLI --------------------------------------------------------------------------------------


def test_cli_status_table_and_exit_code(
    fake: type[FakeComponent],
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(cli, "load_settings", lambda: settings)
    assert cli.main(["status"]) == 1
    assert cli.main(["up"]) == 0
    out = capsys.readouterr().out
    assert "component" in out and f"main {fake.port}" in out and "yes" in out
    assert cli.main(["logs", "-n", "1"]) == 0
    assert "fatal: something broke" in capsys.readouterr().out
    assert cli.main(["down"]) == 0
    assert cli.main(["up", "nonsense"]) == 1
    assert "unknown component" in capsys.readouterr().err


def test_cli_requires_a_command() -> None:
    with pytest.raises(SystemExit):
        cli.main([])


def test_aws_jar_shades_the_connector_version_the_stack_pins() -> None:
    """jobs/jvm's `aws` profile gets the version from stack/maven/flink-jars.pom.xml; its own
    default (a manual `mvn -Paws package`) is the same."""
    version = jars.kafka_connector_version()
    pom = (jars.OPS_DIR / "pom.xml").read_text()
    assert f"<kafka.connector.version>{version}</kafka.connector.version>" in pom
