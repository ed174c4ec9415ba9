"""Flink session cluster from the PyFlink distribution in the venv, and job submission to it.

The cluster runs pyflink's own ``bin/`` scripts with three environment overrides
(see :func:`flink_env`): ``FLINK_CONF_DIR`` (the repo's ``flink-conf/`` rendered with runtime
paths), ``FLINK_LIB_DIR`` (pyflink's ``lib/`` plus flink-python and the Kafka connector) and
``FLINK_PLUGINS_DIR`` (only the Prometheus metrics reporter).
flink-python on the cluster classpath loads pemja's native library once per TaskManager, so
any number of thread-mode jobs can run one after another on the same TaskManager.

Metrics: the JobManager serves Prometheus metrics on the first port of
``monitoring.flink_metrics_ports``, the TaskManager on the first free one of the rest
(:func:`reporter_port_args`). Logs: the daemons write JSON lines
(``flink-conf/log4j.properties``).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from kazoo.client import KazooClient
from kazoo.exceptions import KazooException, NoNodeError
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.protocol.states import ZnodeStat

from stack import cutoff
from stack.jars import (
    JAVA_PACKAGES,
    flink_connector_jars,
    flink_jars_dir,
    log4j_json_layout_jars,
    prometheus_reporter_jars,
)
from stack.services import Component
from stack.system import (
    StackError,
    ensure_packages,
    listening_pid,
    pid_alive,
    process_belongs_to,
    read_pids,
    wait_until,
)
from tickflow.config import Settings

JOB_ID_PATTERN = re.compile(r"JobID ([0-9a-f]{32})")
TERMINAL_STATES = {"FINISHED", "FAILED", "CANCELED"}
# copied as they are from the repo's flink-conf/ (config.yaml is rendered)
LOG4J_FILES = ("log4j.properties", "log4j-cli.properties", "log4j-console.properties",
               "log4j-session.properties")  # fmt: skip
# the reporter named "prom" in flink-conf/config.yaml; the plugin's folder under plugins/
REPORTER_PORT_KEY = "metrics.reporter.prom.port"
PROMETHEUS_PLUGIN = "metrics-prometheus"
JSON_LAYOUT_GLOB = "log4j-layout-template-json-*.jar"
# what flink-dist must bundle for the HA profile: jobs/jvm replaces its LeaderLatch (CURATOR-696)
# with one relocated to these packages (the pom's flink.shaded.zookeeper.version)
BUNDLED_ZOOKEEPER = "org.apache.flink:flink-shaded-zookeeper-3:jar:3.7.2-20.0"


def flink_home() -> Path:
    """The Flink distribution inside the installed apache-flink wheel (site-packages/pyflink)."""
    spec = importlib.util.find_spec("pyflink")
    if spec is None or spec.origin is None:
        raise StackError("flink: the apache-flink package is not installed in this interpreter")
    return Path(spec.origin).parent


def venv_python() -> Path:
    """The interpreter of this virtualenv: PyFlink clients and workers must use it."""
    candidate = Path(sys.prefix) / "bin" / "python"
    return candidate if candidate.exists() else Path(sys.executable)


def worker_pythonpath(settings: Settings) -> str:
    """PYTHONPATH for thread-mode workers: the embedded interpreter does not see the venv's
    site-packages (``No module named 'pemja'``) nor editable installs, so list them."""
    return os.pathsep.join([sysconfig.get_paths()["purelib"], str(settings.root)])


# -- configuration rendering (pure) ---------------------------------------------------------


def parse_ports(text: str) -> list[int]:
    """Flink's port syntax (``9249-9252``, ``9249,9251``, ``9249``) -> the ports, in order."""
    ports: list[int] = []
    for part in str(text).split(","):
        first, _, last = part.strip().partition("-")
        try:
            low, high = int(first), int(last or first)
        except ValueError:
            raise StackError(f"bad port range {text!r}: expected e.g. 9249-9252") from None
        if not 0 < low <= high < 65536:
            raise StackError(f"bad port range {text!r}: ports must be 1..65535, low to high")
        ports += [port for port in range(low, high + 1) if port not in ports]
    return ports


def format_ports(ports: list[int]) -> str:
    """The shortest Flink port syntax for the ports: ``a-b`` when contiguous, else a list."""
    if len(ports) > 1 and ports == list(range(ports[0], ports[-1] + 1)):
        return f"{ports[0]}-{ports[-1]}"
    return ",".join(map(str, ports))


def flink_metrics_ports(settings: Settings) -> list[int]:
    """Every port of ``monitoring.flink_metrics_ports`` (Prometheus scrapes them all)."""
    ports = parse_ports(settings.monitoring.flink_metrics_ports)
    if len(ports) < 2:
        raise StackError(
            f"monitoring.flink_metrics_ports {settings.monitoring.flink_metrics_ports!r} needs "
            "at least two ports: one for the JobManager, the rest for TaskManagers"
        )
    return ports


def reporter_port_args(settings: Settings, daemon: str) -> list[str]:
    """Dynamic properties for ``jobmanager.sh``/``taskmanager.sh start``: the JobManager's
    reporter takes the range's first port, TaskManagers the rest, so each daemon's port is
    known whichever starts first."""
    ports = flink_metrics_ports(settings)
    if settings.flink.standby_rest_port:
        # two JobManagers: the first takes the range's first port, the standby its last
        jobmanagers, taskmanagers = [ports[0], ports[-1]], ports[1:-1]
    else:
        jobmanagers, taskmanagers = ports[:1], ports[1:]
    mine = jobmanagers if daemon == "jobmanager" else taskmanagers
    return ["-D", f"{REPORTER_PORT_KEY}={format_ports(mine)}"]


def jobmanager_cgroup(rest_port: int) -> str:
    """The cgroup (stack.cutoff) of the JobManager serving REST on ``rest_port``."""
    return f"jobmanager-{rest_port}"


def jobmanager_preexec(settings: Settings, rest_port: int) -> Callable[[], None] | None:
    """What the JobManager's start script runs before it execs: with
    ``flink.partitionable_jobmanagers``, joining the JobManager's cgroup (not cut off: a
    JobManager starting again after a drill starts connected)."""
    if not settings.flink.partitionable_jobmanagers:
        return None
    name = jobmanager_cgroup(rest_port)
    cutoff.ensure(name)
    cutoff.heal(name)
    return functools.partial(cutoff.join, name)


def jobmanager_args(settings: Settings, rest_port: int) -> list[str]:
    """Dynamic properties for ``jobmanager.sh start``: its metrics and REST ports (with HA
    the JobManagers share one configuration and differ in their REST port)."""
    return [*reporter_port_args(settings, "jobmanager"), "-D", f"rest.port={rest_port}"]


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested YAML mapping -> Flink's dotted keys."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    """Dotted keys -> nested mapping (the layout of Flink 2's config.yaml)."""
    tree: dict[str, Any] = {}
    for dotted, value in flat.items():
        node = tree
        *parents, leaf = dotted.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"flink config key {dotted!r} nests under value key {part!r}")
            node = child
        if isinstance(node.get(leaf), dict):
            raise ValueError(f"flink config key {dotted!r} is also a prefix of other keys")
        node[leaf] = value
    return tree


def render_flink_config(base_yaml: str, overrides: dict[str, Any]) -> str:
    """The repo's config.yaml with dotted-key overrides applied, as nested Flink 2 YAML."""
    flat = flatten(yaml.safe_load(base_yaml) or {})
    flat.update(overrides)
    header = (
        "# rendered by `tickflow stack up` from flink-conf/config.yaml; edits are overwritten\n"
    )
    return header + yaml.safe_dump(unflatten(flat), sort_keys=False, width=1000)


def runtime_overrides(settings: Settings, runtime: Path, python: Path) -> dict[str, Any]:
    """Keys that come from tickflow.yaml or depend on this machine's paths."""
    flink = settings.flink
    return {
        "rest.port": flink.rest_port,
        "jobmanager.rpc.port": flink.rpc_port,
        "parallelism.default": flink.parallelism,
        "python.execution-mode": flink.python_execution_mode,
        "env.log.dir": str(runtime / "log"),
        "env.pid.dir": str(runtime / "pid"),
        "io.tmp.dirs": str(runtime / "tmp"),
        "web.tmpdir": str(runtime / "tmp" / "web"),
        # whatever flink-conf/ says: no jar upload through the web UI (REST /jars)
        "web.submit.enable": False,
        "execution.checkpointing.dir": (runtime / "checkpoints").as_uri(),
        "execution.checkpointing.savepoint-dir": (runtime / "savepoints").as_uri(),
        "python.executable": str(python),
        "python.client.executable": str(python),
        "python.pythonpath": worker_pythonpath(settings),
        # the whole range; the daemons get their share with reporter_port_args
        REPORTER_PORT_KEY: format_ports(flink_metrics_ports(settings)),
        **failover_overrides(settings),
        **ha_overrides(settings, runtime),
    }


def failover_overrides(settings: Settings) -> dict[str, Any]:
    """Faster heartbeats and restarts where configured (the HA profile): a lost TaskManager's
    tasks restart on the spare seconds after, not after Flink's default 50 s of silence."""
    flink = settings.flink
    out: dict[str, Any] = {}
    if flink.heartbeat_interval_ms:
        out["heartbeat.interval"] = f"{flink.heartbeat_interval_ms} ms"
    if flink.heartbeat_timeout_ms:
        out["heartbeat.timeout"] = f"{flink.heartbeat_timeout_ms} ms"
    if flink.heartbeat_rpc_failure_threshold:
        out["heartbeat.rpc-failure-threshold"] = flink.heartbeat_rpc_failure_threshold
    if flink.restart_backoff_ms:
        out["restart-strategy.exponential-delay.initial-backoff"] = f"{flink.restart_backoff_ms} ms"
    return out


HA_ZOOKEEPER_ROOT = "/flink"
HA_CLUSTER_ID = "/tickflow"
# where Flink's JobManagers elect their leader (a Curator LeaderLatch: the lowest sequence
# leads) and where the leader publishes its REST address (a Java-serialized LeaderInformation)
HA_LEADER_LATCH = f"{HA_ZOOKEEPER_ROOT}{HA_CLUSTER_ID}/leader/latch"
HA_LEADER_REST = f"{HA_ZOOKEEPER_ROOT}{HA_CLUSTER_ID}/leader/rest_server/connection_info"


def ha_overrides(settings: Settings, runtime: Path) -> dict[str, Any]:
    """Flink's ZooKeeper HA services (the HA profile): the leader, the jobs and their latest
    checkpoints in ZooKeeper and ``<runtime>/ha``, so a standby JobManager resumes the jobs."""
    flink = settings.flink
    if not flink.ha:
        return {}
    timeout = f"{flink.ha_session_timeout_ms} ms"
    return {
        "high-availability.type": "zookeeper",
        "high-availability.zookeeper.quorum": ",".join(
            f"127.0.0.1:{port}" for port in flink.zookeeper_client_ports()
        ),
        "high-availability.zookeeper.path.root": HA_ZOOKEEPER_ROOT,
        "high-availability.cluster-id": HA_CLUSTER_ID,
        "high-availability.storageDir": (runtime / "ha").as_uri(),
        "high-availability.zookeeper.client.session-timeout": timeout,
        "high-availability.zookeeper.client.connection-timeout": timeout,
        # with HA the JobManagers' RPC ports come from this range, one each
        "high-availability.jobmanager.port": f"{flink.rpc_port}-{flink.rpc_port + 1}",
        # an ensemble's node lost (its leader too) only suspends the connection: the client
        # moves to a node left and keeps its session, so the leader keeps its leadership and
        # the job runs on. With one node a suspension is the whole ZooKeeper gone: revoke then
        # (tolerating it there left two JobManagers leading after ZooKeeper's restart)
        "high-availability.zookeeper.client.tolerate-suspended-connections": (
            flink.ha_zookeeper_nodes > 1
        ),
    }


def check_bundled_zookeeper(flink_dist: Path) -> None:
    """Refuse an HA cluster whose flink-dist bundles another Curator than the one the project's
    LeaderLatch (jobs/jvm, ahead of flink-dist on the classpath) was relocated for."""
    with zipfile.ZipFile(flink_dist) as jar:
        dependencies = jar.read("META-INF/DEPENDENCIES").decode("utf-8", "replace")
    if BUNDLED_ZOOKEEPER not in dependencies:
        raise StackError(
            f"flink: {flink_dist.name} does not bundle {BUNDLED_ZOOKEEPER}, the Curator that "
            "jobs/jvm's LeaderLatch replaces; review that class for this Flink (drop it once "
            "Flink bundles Curator >= 5.8.0) and update BUNDLED_ZOOKEEPER and the pom"
        )


# -- the cluster component --------------------------------------------------------------------


def runtime_dir(settings: Settings) -> Path:
    return settings.state_dir / "flink"


class Flink(Component):
    name = "flink"

    @property
    def process_count(self) -> int:  # type: ignore[override]
        """JobManager(s) and TaskManager(s)."""
        return len(self.settings.flink.rest_ports()) + self.settings.flink.taskmanagers

    @property
    def conf_dir(self) -> Path:
        return self.home / "conf"

    @property
    def lib_dir(self) -> Path:
        return self.home / "lib"

    @property
    def plugins_dir(self) -> Path:
        return self.home / "plugins"

    @property
    def log_dir(self) -> Path:
        return self.home / "log"

    @property
    def log_file(self) -> Path:
        found = sorted(self.log_dir.glob("flink-*-standalonesession-*.log"))
        return found[0] if found else self.log_dir / "flink-standalonesession.log"

    def log_files(self) -> list[Path]:
        found: list[Path] = []
        for daemon in ("standalonesession", "taskexecutor"):
            for suffix in ("log", "out"):
                found += sorted(self.log_dir.glob(f"flink-*-{daemon}-*.{suffix}"))
        return found or [self.log_file]

    def pid_files(self) -> list[Path]:
        return sorted((self.home / "pid").glob("flink-*.pid"))

    def stop(self) -> list[int]:
        pids = super().stop()
        if self.settings.flink.partitionable_jobmanagers:
            for port in self.settings.flink.rest_ports():
                cutoff.remove(jobmanager_cgroup(port))  # healed, if a drill left it cut off
        return pids

    def base_config(self) -> str:
        return (self.settings.root / "flink-conf" / "config.yaml").read_text()

    def ports(self) -> dict[str, int]:
        flink = self.settings.flink
        metrics = flink_metrics_ports(self.settings)
        ports = {
            "rest": flink.rest_port,
            "jobmanager-rpc": flink.rpc_port,
            "jm-metrics": metrics[0],
            "tm-metrics": metrics[1],
        }
        if flink.standby_rest_port:
            ports["standby-rest"] = flink.standby_rest_port
        return ports

    def install(self) -> None:
        ensure_packages(JAVA_PACKAGES)
        if self.settings.flink.partitionable_jobmanagers:
            ensure_packages(cutoff.NFT_PACKAGES)
        flink_jars_dir(self.settings)

    def configure(self) -> None:
        # the log dir must exist before the daemons start, or they die without a word
        for sub in ("log", "pid", "tmp/web", "checkpoints", "savepoints", "conf", "lib",
                    "plugins"):  # fmt: skip
            (self.home / sub).mkdir(parents=True, exist_ok=True)
        self._assemble_lib()
        self._assemble_plugins()
        source = self.settings.root / "flink-conf"
        for name in LOG4J_FILES:
            (self.conf_dir / name).write_text((source / name).read_text())
        overrides = runtime_overrides(self.settings, self.home, venv_python())
        (self.conf_dir / "config.yaml").write_text(
            render_flink_config(self.base_config(), overrides)
        )

    def _assemble_lib(self) -> None:
        """lib/ = pyflink's lib/ + flink-python + Kafka connector, as symlinks."""
        home = flink_home()
        wanted = sorted(home.glob("lib/*.jar")) + sorted(home.glob("opt/flink-python-*.jar"))
        wanted += flink_connector_jars(self.settings)
        if not any(jar.match(JSON_LAYOUT_GLOB) for jar in wanted):
            # the JsonTemplateLayout of flink-conf/log4j.properties (the 2.2.1 wheel ships it)
            wanted += log4j_json_layout_jars(self.settings)
        if self.settings.flink.ha:
            check_bundled_zookeeper(next(j for j in wanted if j.name.startswith("flink-dist")))
        for stale in self.lib_dir.iterdir():
            stale.unlink()
        for jar in wanted:
            (self.lib_dir / jar.name).symlink_to(jar)

    def _assemble_plugins(self) -> None:
        """plugins/metrics-prometheus/ = the Prometheus reporter (from the wheel's plugins/,
        else from Maven), the only plugin the cluster loads."""
        shipped = sorted(flink_home().glob(f"plugins/{PROMETHEUS_PLUGIN}/*.jar"))
        jars = shipped or prometheus_reporter_jars(self.settings)
        shutil.rmtree(self.plugins_dir)  # symlinks only: the jars they point to stay
        plugin = self.plugins_dir / PROMETHEUS_PLUGIN
        plugin.mkdir(parents=True)
        for jar in jars:
            (plugin / jar.name).symlink_to(jar)

    def launch(self) -> None:
        env = flink_env(self.settings)
        bin_dir = flink_home() / "bin"

        def start(
            script: str, args: list[str], preexec: Callable[[], None] | None = None
        ) -> subprocess.Popen[str]:
            return subprocess.Popen(
                [str(bin_dir / script), "start", *args],
                cwd=self.home,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
                preexec_fn=preexec,
            )

        def finish(name: str, script: subprocess.Popen[str]) -> None:
            output, _ = script.communicate(timeout=120)
            if script.returncode != 0:
                raise self.failure(f"{name} start failed: {output.strip()}")

        jobmanagers = [
            start(
                "jobmanager.sh",
                jobmanager_args(self.settings, port),
                jobmanager_preexec(self.settings, port),
            )
            for port in self.settings.flink.rest_ports()
        ]
        # TaskManagers one after another: each daemon script appends to one pid file
        for _ in range(self.settings.flink.taskmanagers):
            finish("taskmanager.sh", start("taskmanager.sh", taskmanager_args(self.settings)))
        for script in jobmanagers:
            finish("jobmanager.sh", script)
        # a fresh TaskManager imports the job code as it is now
        (self.home / "taskmanager.code").write_text(job_code_digest(self.settings))

    def ready(self, log: Callable[[str], None]) -> None:
        """With spare TaskManagers: the job's code loaded into each (``warm_taskmanagers``)."""
        if self.settings.flink.taskmanagers > 1:
            started = time.monotonic()
            jobs = warm_taskmanagers(self.settings)
            log(f"flink: the job's Python code loaded into the TaskManagers by "
                f"{len(jobs)} warm-up job(s) ({time.monotonic() - started:.1f} s)")  # fmt: skip

    def overview(self) -> dict[str, Any]:
        return rest(self.settings, "GET", "/overview")

    def answers(self) -> bool:
        overview = self.overview()
        return overview.get("taskmanagers", 0) >= self.settings.flink.taskmanagers and (
            overview.get("slots-total", 0) >= 1
        )

    def details(self) -> str:
        try:
            overview = self.overview()
        except OSError:
            return ""
        return (
            f"{overview['slots-available']}/{overview['slots-total']} slots free, "
            f"{overview['jobs-running']} job(s) running"
        )


# -- job submission ---------------------------------------------------------------------------


def flink_bin(settings: Settings) -> Path:
    """bin/flink of the distribution; run it with :func:`flink_env`."""
    return flink_home() / "bin" / "flink"


def flink_env(settings: Settings) -> dict[str, str]:
    """Environment for bin/flink and the daemon scripts: the stack's conf and lib dirs."""
    runtime = runtime_dir(settings)
    env = dict(os.environ)
    env["FLINK_CONF_DIR"] = str(runtime / "conf")
    env["FLINK_LIB_DIR"] = str(runtime / "lib")
    env["FLINK_PLUGINS_DIR"] = str(runtime / "plugins")
    env["PATH"] = f"{venv_python().parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def rest(settings: Settings, method: str, path: str, timeout: float = 5.0) -> Any:
    """Call the Flink REST API on loopback and return the decoded JSON body: the first
    JobManager that answers (with HA, either serves the leader's view)."""
    ports = settings.flink.rest_ports()
    for port in ports:
        request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                body = response.read()
        except urllib.error.HTTPError:
            raise  # it answered: a real error of the request
        except OSError:
            if port == ports[-1]:
                raise
            continue  # this JobManager is gone: ask the next
        return json.loads(body) if body else {}
    raise AssertionError("unreachable")


def list_jobs(settings: Settings) -> list[dict[str, Any]]:
    """Jobs the cluster knows about (REST /jobs/overview): jid, name, state, times."""
    jobs: list[dict[str, Any]] = rest(settings, "GET", "/jobs/overview").get("jobs", [])
    return jobs


def job_state(settings: Settings, job_id: str) -> str:
    return str(rest(settings, "GET", f"/jobs/{job_id}")["state"])


def job_restarts(settings: Settings, job_id: str) -> int:
    """How many times the job restarted since it was submitted (its numRestarts metric)."""
    metrics = rest(settings, "GET", f"/jobs/{job_id}/metrics?get=numRestarts")
    return int(float(metrics[0]["value"])) if metrics else 0


def _wait_free_slots(settings: Settings, needed: int, timeout: float) -> None:
    def enough() -> bool:
        return int(rest(settings, "GET", "/overview")["slots-available"]) >= needed

    if not wait_until(enough, timeout, interval=0.5):
        running = [f"{j['name']} ({j['jid']})" for j in list_jobs(settings)
                   if j["state"] not in TERMINAL_STATES]  # fmt: skip
        raise StackError(
            f"flink: fewer than {needed} free task slot(s) after {timeout:.0f} s; "
            f"running jobs: {', '.join(running) or 'none'} (cancel one: tickflow job cancel)"
        )


# packages a job imports in the TaskManager's embedded Python interpreter
JOB_CODE_PACKAGES = ("jobs", "schemas", "tickflow")


def job_code_digest(settings: Settings) -> str:
    """A digest of the Python code a job runs in the TaskManager."""
    digest = hashlib.sha256()
    for package in JOB_CODE_PACKAGES:
        for path in sorted((settings.root / package).rglob("*.py")):
            digest.update(str(path.relative_to(settings.root)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def taskmanager_args(settings: Settings) -> list[str]:
    """Dynamic properties for ``taskmanager.sh start``: its metrics port range."""
    return reporter_port_args(settings, "taskmanager")


def _taskmanager_script(settings: Settings, action: str, timeout: float) -> None:
    args = taskmanager_args(settings) if action == "start" else []
    subprocess.run(
        [str(flink_home() / "bin" / "taskmanager.sh"), action, *args],
        cwd=runtime_dir(settings),
        env=flink_env(settings),
        capture_output=True,
        check=True,
        timeout=timeout,
    )


def _wait_taskmanagers(settings: Settings, count: int, timeout: float) -> None:
    def registered() -> bool:
        return int(rest(settings, "GET", "/overview").get("taskmanagers", 0)) == count

    if not wait_until(registered, timeout, 0.5):
        raise StackError(f"flink: not {count} TaskManager(s) after {timeout:.0f} s")


def restart_taskmanager(settings: Settings, timeout: float = 120.0) -> None:
    """Stop and start the TaskManagers (running jobs restart from their last checkpoint)."""
    count = len(taskmanager_pids(settings))
    for _ in range(count):
        _taskmanager_script(settings, "stop", timeout)
    for _ in range(max(count, 1)):
        _taskmanager_script(settings, "start", timeout)
    _wait_taskmanagers(settings, max(count, 1), timeout)


def taskmanager_pid_file(settings: Settings) -> Path:
    return runtime_dir(settings) / "pid" / "flink--taskexecutor.pid"


def taskmanager_pids(settings: Settings) -> list[int]:
    """The live TaskManagers of this stack, oldest first."""
    return [p for p in read_pids(taskmanager_pid_file(settings)) if pid_alive(p)]


def forget_dead_taskmanagers(settings: Settings) -> None:
    """Keep only live pids in the TaskManagers' pid file: the daemon scripts count every
    line as a running instance (and ``stop`` signals the last one)."""
    pid_file = taskmanager_pid_file(settings)
    if pid_file.exists():
        pid_file.write_text("".join(f"{pid}\n" for pid in taskmanager_pids(settings)))


def job_taskmanager_pids(settings: Settings, job_id: str) -> list[int]:
    """The pids of the TaskManagers that run a subtask of the job (through each TaskManager's
    data port, which its process listens on)."""
    ids = job_taskmanager_ids(settings, job_id)
    pids = []
    for tm in rest(settings, "GET", "/taskmanagers")["taskmanagers"]:
        pid = listening_pid(int(tm["dataPort"])) if tm["id"] in ids else None
        if pid is not None and process_belongs_to(pid, runtime_dir(settings)):
            pids.append(pid)
    return pids


def kill_taskmanager(settings: Settings, pid: int | None = None) -> int:
    """SIGKILL a TaskManager (the newest, unless ``pid`` says which), as a crash would; its
    pid."""
    live = taskmanager_pids(settings)
    if pid is None:
        if not live:
            raise StackError("flink: no TaskManager running")
        pid = live[-1]
    elif pid not in live:
        raise StackError(f"flink: pid {pid} is not a TaskManager of this stack")
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not pid_alive(pid), 10.0, 0.05)
    forget_dead_taskmanagers(settings)
    return pid


LEADERSHIP = re.compile(r"http://[0-9.a-z]+:(\d+) was granted leadership")


def leading_rest_port(settings: Settings) -> int | None:
    """With HA: the REST port of the JobManager that leads, i.e. the last to log that its
    endpoint was granted leadership (a dead leader logs nothing more); None before any."""
    latest: tuple[str, int] | None = None
    for log in sorted((runtime_dir(settings) / "log").glob("flink-*-standalonesession-*.log")):
        with log.open(errors="replace") as lines:
            for line in lines:
                if "granted leadership" not in line:
                    continue
                found = LEADERSHIP.search(line)
                if found:
                    stamp = json.loads(line).get("ts", "")
                    if latest is None or stamp >= latest[0]:
                        latest = (stamp, int(found.group(1)))
    return latest[1] if latest else None


def kill_jobmanager(settings: Settings, rest_port: int) -> int:
    """SIGKILL the JobManager serving REST on ``rest_port``, as a crash would; its pid."""
    pid = listening_pid(rest_port)
    if pid is None or not process_belongs_to(pid, runtime_dir(settings)):
        raise StackError(f"flink: no JobManager of this stack on REST port {rest_port}")
    os.kill(pid, signal.SIGKILL)
    return pid


def rest_answers(rest_port: int, timeout: float = 0.5) -> bool:
    """Whether a JobManager answers on ``rest_port`` at all (a standby's "ongoing leader
    election" is an answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{rest_port}/config", timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def fence_jobmanager(settings: Settings, rest_port: int, pid: int, timeout: float = 10.0) -> None:
    """Kill the JobManager process ``pid`` (serving REST on ``rest_port``) so that nothing it
    sent can arrive later: SIGKILL, then (where it runs in a cgroup of its own) its connections
    destroyed, unsent data and all."""
    if not process_belongs_to(pid, runtime_dir(settings)):
        raise StackError(f"flink: pid {pid} is no JobManager of this stack")
    os.kill(pid, signal.SIGKILL)
    if not wait_until(lambda: not pid_alive(pid), timeout, 0.05):
        raise StackError(f"flink: the JobManager pid {pid} outlived SIGKILL for {timeout:.0f} s")
    if settings.flink.partitionable_jobmanagers:
        cutoff.reset_connections(jobmanager_cgroup(rest_port))


def leader_rest_address(connection_info: bytes) -> str | None:
    """The address in a leader's ``connection_info`` node: Java serialization of
    LeaderInformation, which opens with ``writeUTF(address)`` in a block (magic, version,
    TC_BLOCKDATA and its length, then the UTF's two-byte length and its bytes)."""
    if connection_info[:5] != b"\xac\xed\x00\x05w" or len(connection_info) < 8:
        return None
    length = int.from_bytes(connection_info[6:8], "big")
    return connection_info[8 : 8 + length].decode("utf-8", "replace")


def release_lost_leadership(settings: Settings, rest_port: int, timeout: float = 2.0) -> str | None:
    """The JobManager that served REST on ``rest_port`` is dead. If it led, delete every
    ZooKeeper node its session still holds (its place in the leader latch, its leader
    information, its locks on job graphs and checkpoints), which the session's expiry would
    delete ``ha_session_timeout_ms`` later: the standby's latch, watching the node before its
    own, then leads at once. One transaction, on condition that its latch node is still there,
    so nothing is deleted once the standby leads. Returns what was deleted, or None."""
    client = KazooClient(
        hosts=",".join(f"127.0.0.1:{p}" for p in settings.flink.zookeeper_client_ports()),
        timeout=timeout,
    )
    try:
        client.start(timeout=timeout)
        return _release_session_of(client, rest_port)
    except (KazooException, KazooTimeoutError) as exc:
        raise StackError(f"flink: releasing the leadership in ZooKeeper failed: {exc!r}") from exc
    finally:
        client.stop()
        client.close()


def _release_session_of(client: KazooClient, rest_port: int) -> str | None:
    try:
        data, stat = client.get(HA_LEADER_REST)
    except NoNodeError:
        return None  # no leader, or its session expired already
    if leader_rest_address(data) != f"http://127.0.0.1:{rest_port}" or not stat.ephemeralOwner:
        return None  # the leader is another JobManager
    owner = stat.ephemeralOwner
    held = [path for path, node in _zookeeper_nodes(client, HA_ZOOKEEPER_ROOT + HA_CLUSTER_ID)
            if node.ephemeralOwner == owner]  # fmt: skip
    latch = [path for path in held if path.startswith(f"{HA_LEADER_LATCH}/")]
    if not latch:
        return None
    transaction = client.transaction()
    for path in latch:
        transaction.check(path, 0)  # a latch node is never written: still there, still version 0
    for path in held:  # ephemeral: leaves, in any order
        transaction.delete(path)
    if any(isinstance(result, Exception) for result in transaction.commit()):
        return None  # its session expired meanwhile: nothing left to release
    return f"deleted the {len(held)} ZooKeeper node(s) its session {owner:#x} held"


def _zookeeper_nodes(client: KazooClient, root: str) -> list[tuple[str, ZnodeStat]]:
    """Every node under ``root`` (depth first), each with its stat."""
    out: list[tuple[str, ZnodeStat]] = []
    pending = [root]
    while pending:
        path = pending.pop()
        try:
            children = client.get_children(path)
        except NoNodeError:
            continue
        for child in children:
            child_path = f"{path}/{child}"
            stat = client.exists(child_path)
            if stat is not None:
                out.append((child_path, stat))
                pending.append(child_path)
    return out


def silent_rest_ports(settings: Settings) -> list[int]:
    """The JobManagers' REST ports nothing listens on (with HA: a JobManager that died)."""
    return [p for p in settings.flink.rest_ports() if listening_pid(p) is None]


def start_jobmanager(settings: Settings, rest_port: int, timeout: float = 120.0) -> None:
    """Start a JobManager serving REST on ``rest_port`` (with HA: a standby beside the
    leader, which takes over when the leader's ZooKeeper session expires)."""
    subprocess.run(
        [str(flink_home() / "bin" / "jobmanager.sh"), "start",
         *jobmanager_args(settings, rest_port)],
        cwd=runtime_dir(settings),
        env=flink_env(settings),
        capture_output=True,
        check=True,
        timeout=timeout,
        preexec_fn=jobmanager_preexec(settings, rest_port),
    )  # fmt: skip
    if not wait_until(lambda: listening_pid(rest_port) is not None, timeout, 0.5):
        raise StackError(f"flink: no JobManager on REST port {rest_port} after {timeout:.0f} s")


def start_taskmanager(settings: Settings, timeout: float = 120.0) -> None:
    """Start a TaskManager beside the live ones and wait until the JobManager lists exactly
    them (a dead one it still lists goes once its heartbeats fail)."""
    forget_dead_taskmanagers(settings)
    _taskmanager_script(settings, "start", timeout)
    _wait_taskmanagers(settings, len(taskmanager_pids(settings)), timeout)


# a TaskManager that has just registered may not offer its slots yet: the scheduler then puts
# every warm-up subtask on the others, and the warm-up runs again for it
WARM_UP_ATTEMPTS = 3


def free_slots(settings: Settings) -> dict[str, int]:
    """Free task slots per registered TaskManager (its id)."""
    return {tm["id"]: int(tm["freeSlots"])
            for tm in rest(settings, "GET", "/taskmanagers")["taskmanagers"]}  # fmt: skip


def warm_taskmanagers(settings: Settings, timeout: float = 300.0) -> list[str]:
    """Load the pipeline's Python code into every TaskManager with a free slot
    (jobs/warmup.py, a subtask per free slot), so that a job restarting there does not wait
    for it; the warm-up jobs' ids (none when no slot is free)."""
    job_ids: list[str] = []
    warmed: set[str] = set()
    for _ in range(WARM_UP_ATTEMPTS):
        free = free_slots(settings)
        if not {tm for tm, slots in free.items() if slots} - warmed:
            break
        args = [str(sum(free.values())), settings.flink.python_execution_mode]
        job_id = submit_python_job(
            settings, str(settings.root / "jobs" / "warmup.py"), args, timeout=timeout
        )
        state = wait_job_finished(settings, job_id, timeout)
        if state != "FINISHED":
            raise StackError(f"flink: the warm-up job {job_id} {state}: "
                             f"{root_exception(settings, job_id)}")  # fmt: skip
        job_ids.append(job_id)
        warmed |= job_taskmanager_ids(settings, job_id)
    return job_ids


def taskmanager_count(settings: Settings) -> int:
    return int(rest(settings, "GET", "/overview").get("taskmanagers", 0))


def add_taskmanager(settings: Settings, timeout: float = 120.0) -> int:
    """Start one more TaskManager on this machine (scale-out); the number registered after."""
    before = taskmanager_count(settings)
    _taskmanager_script(settings, "start", timeout)
    _wait_taskmanagers(settings, before + 1, timeout)
    return before + 1


def remove_taskmanager(settings: Settings, timeout: float = 120.0) -> int:
    """Stop the newest TaskManager (its slots must be free); the number registered after."""
    before = taskmanager_count(settings)
    _taskmanager_script(settings, "stop", timeout)
    _wait_taskmanagers(settings, before - 1, timeout)
    return before - 1


def subtask_records_in(settings: Settings, job_id: str, operator: str) -> list[int]:
    """Records each subtask of the vertex named after ``operator`` has taken in so far."""
    for vertex in rest(settings, "GET", f"/jobs/{job_id}")["vertices"]:
        if operator in vertex["name"]:
            detail = rest(settings, "GET", f"/jobs/{job_id}/vertices/{vertex['id']}")
            return [int(s["metrics"]["read-records"]) for s in detail["subtasks"]]
    raise StackError(f"flink: job {job_id} has no vertex {operator!r}")


def job_taskmanagers(settings: Settings, job_id: str) -> dict[str, set[str]]:
    """Per vertex name of a running job, the TaskManagers its subtasks run on."""
    out: dict[str, set[str]] = {}
    for vertex in rest(settings, "GET", f"/jobs/{job_id}")["vertices"]:
        detail = rest(settings, "GET", f"/jobs/{job_id}/vertices/{vertex['id']}/taskmanagers")
        out[vertex["name"]] = {tm["taskmanager-id"] for tm in detail["taskmanagers"]}
    return out


def job_taskmanager_ids(settings: Settings, job_id: str) -> set[str]:
    """The TaskManagers any subtask of the job runs (or ran) on."""
    return set().union(*job_taskmanagers(settings, job_id).values())


def ensure_current_job_code(settings: Settings) -> None:
    """Restart the TaskManager when the job code changed since it started.

    With flink-python on the cluster classpath (see ``Flink._assemble_lib``) the TaskManager
    keeps one embedded Python interpreter for its lifetime, so modules imported by an earlier
    job stay loaded: a job submitted after a code change would run the old code. Restarted
    beside a spare, they are given the new code at once (``warm_taskmanagers``).
    """
    marker = runtime_dir(settings) / "taskmanager.code"
    current = job_code_digest(settings)
    if marker.exists() and marker.read_text() == current:
        return
    restart = marker.exists()
    if restart:
        restart_taskmanager(settings)
    marker.write_text(current)  # first: the warm-up is a job submission too
    if restart and settings.flink.taskmanagers > 1:
        warm_taskmanagers(settings)


def submit_python_job(
    settings: Settings,
    py_module_or_file: str,
    args: list[str],
    detached: bool = True,
    timeout: float = 600.0,
    from_savepoint: str | None = None,
    allow_non_restored_state: bool = False,
) -> str:
    """Submit a PyFlink job (a .py file or a dotted module) to the session cluster, from a
    savepoint or retained checkpoint if given (operators are matched by their uids; with
    ``allow_non_restored_state``, state no operator takes is dropped).

    Returns the job id. Detached: returns once the job is submitted; attached: once it ends.
    """
    ensure_current_job_code(settings)
    _wait_free_slots(settings, settings.flink.parallelism, timeout=60)
    python = str(venv_python())
    argv = [str(flink_bin(settings)), "run"]
    if detached:
        argv.append("-d")
    if from_savepoint:
        argv += ["-s", from_savepoint]
        if allow_non_restored_state:
            argv.append("--allowNonRestoredState")
    argv += ["-pyexec", python, "-pyclientexec", python]
    is_file = py_module_or_file.endswith(".py") or Path(py_module_or_file).is_file()
    argv += ["-py" if is_file else "-pym", py_module_or_file, *args]
    done = subprocess.run(
        argv,
        cwd=settings.root,
        env=flink_env(settings),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    output = done.stdout + done.stderr
    match = JOB_ID_PATTERN.search(output)
    if done.returncode != 0 or match is None:
        client_logs = sorted((runtime_dir(settings) / "log").glob("flink-*-client-*.log"))
        hint = f" Client log: {client_logs[-1]}" if client_logs else ""
        raise StackError(
            f"flink: submitting {py_module_or_file} failed (exit {done.returncode}).{hint}\n"
            + "\n".join(output.strip().splitlines()[-40:])
        )
    return match.group(1)


SAVEPOINT_PATTERN = re.compile(r"Savepoint completed\. Path: (\S+)")


def stop_with_savepoint(
    settings: Settings,
    job_id: str,
    directory: str | None = None,
    timeout: float = 300.0,
    drain: bool = False,
) -> str:
    """``flink stop --savepointPath DIR JOB``: take a final savepoint, then finish the job.
    With ``drain`` (``--drain``) the last watermark passes first: every pending trade is
    matched and every window closed before the savepoint. Returns the savepoint's path (give
    it to ``submit_python_job(from_savepoint=...)``)."""
    target = directory or (runtime_dir(settings) / "savepoints").as_uri()
    done = subprocess.run(
        [
            str(flink_bin(settings)),
            "stop",
            *(["--drain"] if drain else []),
            "--savepointPath",
            target,
            job_id,
        ],
        cwd=settings.root,
        env=flink_env(settings),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    output = done.stdout + done.stderr
    match = SAVEPOINT_PATTERN.search(output)
    if done.returncode != 0 or match is None:
        raise StackError(
            f"flink: stop with savepoint of {job_id} failed (exit {done.returncode}):\n"
            + "\n".join(output.strip().splitlines()[-20:])
        )
    # the CLI returns once the savepoint is complete; the job reaches FINISHED a moment later,
    # and resuming from the savepoint while it still runs would double its output
    wait_job_finished(settings, job_id, timeout / 5)
    return match.group(1)


def cancel_job(settings: Settings, job_id: str, timeout: float = 60.0) -> str:
    """Cancel a job and wait until it reaches a terminal state; return that state."""
    if job_state(settings, job_id) not in TERMINAL_STATES:
        rest(settings, "PATCH", f"/jobs/{job_id}?mode=cancel")
    if not wait_until(lambda: job_state(settings, job_id) in TERMINAL_STATES, timeout, 0.5):
        raise StackError(f"flink: job {job_id} did not stop within {timeout:.0f} s")
    return job_state(settings, job_id)


def wait_job_running(settings: Settings, job_id: str, timeout: float = 120.0) -> str:
    """Wait until every task of the job runs (or the job already finished); return the state.

    Raises StackError with the job's root exception if it fails or is cancelled.
    """
    final: dict[str, str] = {}

    def running_or_done() -> bool:
        job = rest(settings, "GET", f"/jobs/{job_id}")
        state = job["state"]
        tasks_up = all(v["status"] in ("RUNNING", "FINISHED") for v in job.get("vertices", []))
        if state in TERMINAL_STATES or (state == "RUNNING" and tasks_up):
            final["state"] = state
            return True
        return False

    if not wait_until(running_or_done, timeout, 0.5):
        raise StackError(f"flink: job {job_id} not running after {timeout:.0f} s "
                         f"(state {job_state(settings, job_id)})")  # fmt: skip
    if final["state"] in ("FAILED", "CANCELED"):
        raise StackError(
            f"flink: job {job_id} {final['state']}: {root_exception(settings, job_id)}"
        )
    return final["state"]


def wait_job_finished(settings: Settings, job_id: str, timeout: float = 3600.0) -> str:
    """Wait until a (bounded) job reaches a terminal state; return it."""
    if not wait_until(lambda: job_state(settings, job_id) in TERMINAL_STATES, timeout, 1.0):
        raise StackError(f"flink: job {job_id} still {job_state(settings, job_id)} after "
                         f"{timeout:.0f} s")  # fmt: skip
    return job_state(settings, job_id)


def root_exception(settings: Settings, job_id: str) -> str:
    try:
        info = rest(settings, "GET", f"/jobs/{job_id}/exceptions")
    except OSError:
        return "(no exception details)"
    text = str(info.get("root-exception") or "(no root exception)")
    return "\n".join(text.splitlines()[:15])
