"""Keep the local stack and the pipeline job running: restart whatever died, as systemd or
Kubernetes does for a real deployment.

    tickflow stack supervise [--job JOB_ID] [--interval 1]

Every interval: a component whose processes are gone is started again (``stack.manager.up``).
Flink is two daemons: a dead TaskManager is started alone (the JobManager restarts the job's
tasks from the last checkpoint once it registers; started as a spare beside another, it is
given the job's Python code at once: ``flink.warm_taskmanagers``), a dead JobManager takes the
whole cluster down with it (the standalone cluster has no HA store, so the jobs it ran are
gone) and the cluster is started again. The supervised job is resubmitted when the cluster
no longer runs it: from the newest retained checkpoint of any job it ran as
(``execution.checkpointing.externalized-checkpoint-retention: RETAIN_ON_CANCELLATION`` keeps
them), else from where it was first started. A job stopped on purpose (FINISHED or CANCELED)
is left alone.

With Flink HA (the HA profile: ZooKeeper and a standby JobManager) the standby takes the jobs
over by itself: a dead JobManager is started again alone, as the new standby, and a job the
cluster does not list is given ``HA_RECOVERY_GRACE_S`` to be recovered from ZooKeeper before
it is resubmitted (a resubmission beside the recovered job would run it twice). When no
JobManager answers the job listing for as long (a leader election that never settles), Flink is
restarted, and its new leader recovers the job from ZooKeeper.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from redis.exceptions import RedisError

from stack import flink, redis_server
from stack.kafka import (
    BROKER_CONNECT_TIMEOUT_S,
    BrokerUnregistrar,
    Kafka,
    fence_node,
    lost_brokers,
)
from stack.manager import components, up
from stack.redis_server import Redis
from stack.system import StackError, listening_pid, pid_alive, port_open, read_pids
from tickflow.config import Settings

SUPERVISED = ("kafka", "redis", "clickhouse", "flink")
# job states in which the cluster still owns the job (it restarts failed tasks itself)
ALIVE_STATES = {"CREATED", "INITIALIZING", "RUNNING", "RESTARTING", "RECONCILING", "FAILING",
                "CANCELLING", "SUSPENDED"}  # fmt: skip
STOPPED_ON_PURPOSE = {"FINISHED", "CANCELED"}
# with Flink HA: how long a job the cluster does not list may take to be recovered
HA_RECOVERY_GRACE_S = 60.0

Log = Callable[[str], None]
Submit = Callable[[str | None], str]  # restore path (or None) -> new job id


@dataclass
class Action:
    """Something the supervisor did, and when (``time.monotonic()``)."""

    at: float
    what: str


def latest_checkpoint(settings: Settings, job_ids: list[str]) -> str | None:
    """URI of the newest complete retained checkpoint of any of the jobs, if there is one."""
    base = flink.runtime_dir(settings) / "checkpoints"
    found: list[tuple[float, int, Path]] = []
    for job_id in job_ids:
        for chk in (base / job_id).glob("chk-*"):
            metadata = chk / "_metadata"
            if metadata.exists():
                found.append((metadata.stat().st_mtime, int(chk.name[4:]), chk))
    return max(found)[2].as_uri() if found else None


@dataclass
class SupervisedJob:
    """The pipeline job across resubmissions: every id it ran as (newest last)."""

    job_ids: list[str]
    submit: Submit
    first_restore: str | None = None
    stopped: bool = False
    restores: list[str | None] = field(default_factory=list)
    unknown_since: float | None = None  # monotonic time the cluster stopped listing it
    unanswered_since: float | None = None  # monotonic time no JobManager answered the listing

    @property
    def current(self) -> str:
        return self.job_ids[-1]


# how often the brokers' processes are looked at (``kafka.unregister_lost_brokers``)
BROKER_WATCH_S = 0.1
# how often the JobManagers' REST ports are probed for one gone silent (flink.fence_silent_...)
JOBMANAGER_WATCH_S = 0.5
# how often the Redis primary's process is looked at (HA profile), and the Sentinels asked
# which instance is the primary; a refused forced failover is asked again this often, so long
REDIS_WATCH_S = 0.1
SENTINEL_ASK_S = 1.0
FORCE_RETRY_S = 0.2
FORCE_RETRY_FOR_S = 3.0
# a warm-up that failed (a JobManager failover while it ran) is tried again this much later,
# once the job runs: a cold spare cost a restarting job ~10 s of Python imports in the drill
WARM_RETRY_S = 10.0


def _live_primary(settings: Settings, servers: dict[int, Redis]) -> tuple[int, int] | None:
    """The port the Sentinels name the primary and the live process serving it, if any."""
    named = redis_server.sentinel_primary(settings)
    server = servers.get(named[1]) if named is not None else None
    pids = server.pids() if server is not None else []
    return (server.own_port, pids[0]) if server is not None and pids else None


class Supervisor:
    def __init__(
        self,
        settings: Settings,
        job: SupervisedJob | None = None,
        names: tuple[str, ...] = SUPERVISED,
        log: Log = print,
    ) -> None:
        self.settings = settings
        self.job = job
        self.names = names
        self.log = log
        self.actions: list[Action] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warming: threading.Thread | None = None
        # a TaskManager started here whose warm-up has not succeeded yet, and when to retry
        self._cold = False
        self._warm_retry_at = 0.0
        self._watching: threading.Thread | None = None
        self._fencing: threading.Thread | None = None
        self._redis_watch: threading.Thread | None = None
        # set once the broker watch can unregister (its JVM has connected)
        self.watching_brokers = threading.Event()
        # when a standby JobManager's or a spare TaskManager's loss was first seen
        self._lost_since: dict[str, float] = {}
        # per REST port: the JobManager process seen answering there, and since when it is silent
        self._answered: dict[int, int] = {}
        self._silent_since: dict[int, float] = {}
        # per broker: the process seen accepting connections, and since when it refuses them
        self._broker_accepted: dict[int, int] = {}
        self._broker_silent_since: dict[int, float] = {}
        # components whose loss a watcher thread acts on (the rounds then do not)
        self._losses_watched: set[str] = set()

    def _did(self, what: str) -> None:
        self.actions.append(Action(time.monotonic(), what))
        self.log(f"supervisor: {what}")

    def check(self) -> None:
        """One round: restart dead components, then make sure the job runs."""
        for component in components(self.settings, self.names):
            if component.name == "flink":
                self._check_flink()
            elif len(component.pids()) < component.process_count:
                # a node of a cluster (a Kafka node, a Sentinel) is started alone where the
                # component can (``completes_partially``), else the component is restarted
                alive = len(component.pids())
                hold = component.restart_hold()
                if (hold is not None and hold.on_loss and component.name not in self._lost_since
                        and component.name not in self._losses_watched):  # fmt: skip
                    self._did(f"{hold.what} is gone: {hold.on_loss()}")
                if hold is not None and not self._replacement_due(
                    component.name, hold.what, round(hold.most_s * 1000), hold.until
                ):
                    continue
                self._lost_since.pop(component.name, None)
                what = (
                    "is not running"
                    if not alive
                    else (f"runs {alive} of its {component.process_count} processes")
                )
                self._did(f"{component.name} {what}: starting it")
                up(self.settings, [component.name], log=self.log)
                self._did(f"{component.name} answers again")
            else:
                self._lost_since.pop(component.name, None)  # whole again, whoever started it
        if self.job is not None and not self.job.stopped:
            self._check_job(self.job)

    def _check_flink(self) -> None:
        pid_dir = flink.runtime_dir(self.settings) / "pid"
        jobmanager = pid_dir / "flink--standalonesession.pid"
        jm_alive = [p for p in read_pids(jobmanager) if pid_alive(p)]
        tm_alive = len(flink.taskmanager_pids(self.settings))
        if len(jm_alive) >= len(self.settings.flink.rest_ports()):
            self._lost_since.pop("jobmanager", None)  # back, whoever started it
        if tm_alive >= self.settings.flink.taskmanagers:
            self._lost_since.pop("taskmanager", None)
        if not jm_alive:
            # without an HA store a new JobManager knows no jobs: restart the whole cluster
            # (with HA the new leader recovers them from ZooKeeper)
            self._restart_flink("the Flink JobManager is not running: restarting the cluster")
        elif len(jm_alive) < len(self.settings.flink.rest_ports()):
            # HA: one JobManager died, the other leads (or is taking over): a new standby
            if not self._replacement_due("jobmanager", "a JobManager"):
                return
            for port in flink.silent_rest_ports(self.settings):
                self._did(f"the Flink JobManager of REST port {port} is not running: starting "
                          "it as the standby")  # fmt: skip
                flink.start_jobmanager(self.settings, port)
        elif tm_alive < self.settings.flink.taskmanagers:
            wanted = self.settings.flink.taskmanagers
            # with none left the job waits for it; with one left it has failed over to it
            if tm_alive and not self._replacement_due("taskmanager", "a TaskManager"):
                return
            self._did(f"{tm_alive} of {wanted} Flink TaskManager(s) running: starting one")
            flink.start_taskmanager(self.settings)
            self._did("the Flink TaskManager registered")
            if wanted > 1:
                # a spare for the job to restart on: load the job's code into it, beside
                # the rounds (a minute on a busy machine)
                self._cold = True
                self._start_warming()
        elif self._cold:
            self._warm_again_if_due()

    def _fence_silent_jobmanagers(self) -> None:
        """Kill a JobManager that answered on its REST port and has been silent for
        ``flink.fence_silent_jobmanager_ms`` while another answers: cut off the network (or
        hung), it has lost or will lose its leadership to the other, and what it queued meanwhile
        (disconnects Flink's TaskManagers obey from any JobManager) must never be delivered. One
        that never answered yet is starting, and the last one answering is never fenced. A
        JobManager whose process is gone (killed here or not) has its leadership released
        (``flink.release_lost_leadership``)."""
        limit_s = self.settings.flink.fence_silent_jobmanager_ms / 1000
        ports = self.settings.flink.rest_ports()
        answers = {port: flink.rest_answers(port) for port in ports}
        now = time.monotonic()
        for port in ports:
            known = self._answered.get(port)
            if known is not None and not pid_alive(known):
                known = None  # gone: whoever listens there next must answer first
                self._answered.pop(port)
                self._silent_since.pop(port, None)
                self._release_leadership(port)
            if answers[port]:
                self._silent_since.pop(port, None)
                if known is None:
                    # looked up once per process: a scan of every process's sockets (~30 ms)
                    pid = listening_pid(port)
                    if pid is not None:
                        self._answered[port] = pid
                continue
            if known is None or not limit_s:
                continue  # starting: not answered yet (or no fencing)
            since = self._silent_since.setdefault(port, now)
            if now - since < limit_s or not any(answers[p] for p in ports if p != port):
                continue
            flink.fence_jobmanager(self.settings, port, known)
            self._silent_since.pop(port, None)
            self._answered.pop(port, None)
            self._did(f"the Flink JobManager of REST port {port} (pid {known}) has been silent for "
                      f"{now - since:.1f} s while another answers: fenced (killed, its "
                      "connections reset)")  # fmt: skip
            self._release_leadership(port)

    def _release_leadership(self, port: int) -> None:
        """The JobManager of REST port ``port`` is dead: if it led, release what its ZooKeeper
        session holds (``flink.release_lost_leadership``) so the standby leads now, not once
        that session expires."""
        if not self.settings.flink.release_lost_leadership:
            return
        released = flink.release_lost_leadership(self.settings, port)
        if released:
            self._did(f"the leading Flink JobManager of REST port {port} is gone: {released} "
                      "(the standby leads at once)")  # fmt: skip

    def _warm_again_if_due(self) -> None:
        """A spare whose warm-up failed: warmed again ``WARM_RETRY_S`` later, once the job
        runs (the warm-up then takes only spare slots)."""
        if time.monotonic() >= self._warm_retry_at and self._job_running():
            self._start_warming()

    def _start_warming(self) -> None:
        if self._warming is not None and self._warming.is_alive():
            return
        self._warming = threading.Thread(target=self._warm_taskmanagers, daemon=True)
        self._warming.start()

    def _job_running(self) -> bool:
        """Whether the supervised job, if there is one, runs."""
        if self.job is None or not self.job.job_ids:
            return True
        try:
            return any(j["jid"] == self.job.current and j["state"] == "RUNNING"
                       for j in flink.list_jobs(self.settings))  # fmt: skip
        except OSError:
            return False

    def _replacement_due(
        self,
        process: str,
        what: str,
        delay_ms: int | None = None,
        until: str = "once the job has recovered on the one left",
    ) -> bool:
        """Whether to start a new ``process`` now, ``delay_ms`` (by default
        ``flink.replacement_delay_ms``) after its loss was first seen; forgets the loss once it
        says yes."""
        if delay_ms is None:
            delay_ms = self.settings.flink.replacement_delay_ms
        delay_s = delay_ms / 1000
        now = time.monotonic()
        since = self._lost_since.setdefault(process, now)
        if since == now and delay_s:
            self._did(f"{what} is lost: starting another in {delay_s:g} s, {until}")
        if now - since < delay_s:
            return False
        del self._lost_since[process]
        return True

    def _warm_taskmanagers(self) -> None:
        try:
            job_ids = flink.warm_taskmanagers(self.settings)
        except (StackError, OSError) as exc:
            self.errors.append(f"warming the TaskManagers: {type(exc).__name__}: {exc}")
            self.log(f"supervisor: warming the TaskManagers failed: {exc}; again in "
                     f"{WARM_RETRY_S:g} s once the job runs")  # fmt: skip
            self._warm_retry_at = time.monotonic() + WARM_RETRY_S
            return
        self._cold = False
        if job_ids:
            self._did(f"the job's Python code loaded into the TaskManagers ({', '.join(job_ids)})")

    def _check_job(self, job: SupervisedJob) -> None:
        try:
            known = {j["jid"]: j["state"] for j in flink.list_jobs(self.settings)}
        except OSError:
            # the JobManager is starting or a leader is being elected: next round
            if self.settings.flink.ha:
                self._restart_flink_if_unanswered(job)
            return
        job.unanswered_since = None
        state = known.get(job.current)
        if state in ALIVE_STATES:
            job.unknown_since = None
            return
        if state is None and self.settings.flink.ha:
            now = time.monotonic()
            job.unknown_since = job.unknown_since or now
            if now - job.unknown_since < HA_RECOVERY_GRACE_S:
                return  # the leader may still be recovering it from ZooKeeper
        if state in STOPPED_ON_PURPOSE:
            job.stopped = True
            self._did(f"job {job.current} {state}: no longer supervised")
            return
        restore = latest_checkpoint(self.settings, job.job_ids) or job.first_restore
        why = "FAILED" if state == "FAILED" else "unknown to the cluster"
        self._did(f"job {job.current} {why}: resubmitting from {restore or 'the start'}")
        job.job_ids.append(job.submit(restore))
        job.restores.append(restore)
        job.unknown_since = None
        self._did(f"job resubmitted as {job.current}")

    def _restart_flink_if_unanswered(self, job: SupervisedJob) -> None:
        """With HA: restart Flink once no JobManager has answered for ``HA_RECOVERY_GRACE_S``.
        An election that never settled (two JobManagers leading: "ongoing leader election" on
        every REST port, the job deployed and cancelled for minutes) ends with both restarted."""
        now = time.monotonic()
        job.unanswered_since = job.unanswered_since or now
        if now - job.unanswered_since < HA_RECOVERY_GRACE_S:
            return
        self._restart_flink(f"no Flink JobManager has listed the jobs for "
                            f"{HA_RECOVERY_GRACE_S:g} s: restarting the cluster (its leader "
                            "recovers the job from ZooKeeper)")  # fmt: skip
        job.unanswered_since = None

    def _restart_flink(self, why: str) -> None:
        """Stop the whole Flink cluster and start it again."""
        self._did(why)
        components(self.settings, ["flink"])[0].stop()
        up(self.settings, ["flink"], log=self.log)
        self._did("the Flink cluster answers again")

    # -- in the background -------------------------------------------------------------------

    def run(self, interval_s: float = 1.0) -> None:
        """Check every ``interval_s`` until stopped; an error in a round is kept and retried."""
        if self.settings.kafka.unregister_lost_brokers and "kafka" in self.names:
            self._watching = threading.Thread(target=self._watch_brokers, daemon=True)
            self._watching.start()
        if self.settings.redis.sentinels() and {"redis", "redis-replica"} & set(self.names):
            self._losses_watched |= {"redis", "redis-replica"}
            self._redis_watch = threading.Thread(target=self._watch_redis_primary, daemon=True)
            self._redis_watch.start()
        ha = self.settings.flink
        watched = ha.fence_silent_jobmanager_ms or ha.release_lost_leadership
        if watched and len(ha.rest_ports()) > 1 and "flink" in self.names:
            self._fencing = threading.Thread(target=self._watch_jobmanagers, daemon=True)
            self._fencing.start()
        while not self._stop.is_set():
            try:
                self.check()
            except (StackError, OSError) as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")
                self.log(f"supervisor: round failed, retrying: {exc}")
            self._stop.wait(interval_s)

    def _watch_brokers(self) -> None:
        """Every ``BROKER_WATCH_S``: a Kafka broker whose process is gone is unregistered at
        once (``kafka.unregister_lost_brokers``), a round's interval being too long to wait;
        one silent too long is fenced first (``kafka.fence_silent_broker_ms``)."""
        kafka = Kafka(self.settings)
        alive: dict[int, bool] = {}
        unregistrar: BrokerUnregistrar | None = None
        try:
            while not self._stop.wait(BROKER_WATCH_S):
                try:
                    unregistrar = unregistrar or BrokerUnregistrar(self.settings)
                    self.watching_brokers.set()
                    self._fence_silent_brokers(kafka)
                    for node_id in lost_brokers(kafka, alive):
                        reply = unregistrar.unregister(node_id)
                        self._did(f"Kafka broker {node_id} is gone: unregistering it ({reply})")
                except (StackError, OSError) as exc:  # its JVM gone: a new one next time
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                    self.log(f"supervisor: unregistering a lost broker failed: {exc}")
                    if unregistrar is not None:
                        unregistrar.close()
                    unregistrar = None
                    self._stop.wait(1.0)
        finally:
            if unregistrar is not None:
                unregistrar.close()

    def _fence_silent_brokers(self, kafka: Kafka) -> None:
        """Fence a broker that accepted connections from its process and has refused them for
        ``kafka.fence_silent_broker_ms`` while another accepts them: cut off the network, it
        still leads its partitions until its session times out, and holds back every acks=all
        write it follows. Killed (``stack.kafka.fence_node``), it is unregistered by the lost
        brokers' watch like any broker whose process is gone."""
        limit_s = self.settings.kafka.fence_silent_broker_ms / 1000
        if not limit_s or len(kafka.nodes) < 2:
            return
        running = {n.node_id: (n, kafka.node_pids(n)) for n in kafka.nodes}
        accepts = {
            i: bool(pids) and port_open(n.host, n.port, BROKER_CONNECT_TIMEOUT_S)
            for i, (n, pids) in running.items()
        }
        now = time.monotonic()
        for node_id, (_, pids) in running.items():
            known = self._broker_accepted.get(node_id)
            if not pids or known not in pids:
                known = None  # gone, or a new process: it must accept first
                self._broker_accepted.pop(node_id, None)
                self._broker_silent_since.pop(node_id, None)
            if accepts[node_id]:
                self._broker_silent_since.pop(node_id, None)
                if known is None:
                    self._broker_accepted[node_id] = pids[0]
                continue
            if known is None:
                continue  # starting: not accepted yet
            since = self._broker_silent_since.setdefault(node_id, now)
            if now - since < limit_s or not any(a for i, a in accepts.items() if i != node_id):
                continue
            killed = fence_node(self.settings, node_id)
            self._broker_accepted.pop(node_id, None)
            self._broker_silent_since.pop(node_id, None)
            self._did(f"Kafka broker {node_id} has refused connections for {now - since:.1f} s "
                      f"while another accepts them: fenced (pids {killed} killed, the broker's "
                      "and any controller's on its host; connections to it reset)")  # fmt: skip

    def _watch_redis_primary(self) -> None:
        """Every ``REDIS_WATCH_S``: a Redis primary whose process is gone is failed over at
        once (``redis_server.force_failover``). From a round, up to a second after the loss, it
        came when the Sentinels already held the primary down, and a Sentinel then refuses a
        replica whose last INFO (every 10 s until then) is over 5 s old: NOGOODSLAVE, and the
        Sentinels' own failover 1.4 s after the kill. Refused, it is asked again every
        ``FORCE_RETRY_S`` while the Sentinels still name the dead primary."""
        servers = {server.own_port: server
                   for server in components(self.settings, ("redis", "redis-replica"))
                   if isinstance(server, Redis)}  # fmt: skip
        primary: tuple[int, int] | None = None  # its port and the process seen serving it
        asked_at = -SENTINEL_ASK_S
        while not self._stop.wait(REDIS_WATCH_S):
            try:
                if time.monotonic() - asked_at >= SENTINEL_ASK_S:
                    asked_at = time.monotonic()
                    primary = _live_primary(self.settings, servers) or primary
                if primary is None or pid_alive(primary[1]):
                    continue
                port, pid = primary
                primary = None
                self._did(f"the Redis primary (port {port}, pid {pid}) is gone: "
                          f"{self._force_redis_failover(port)}")  # fmt: skip
            except (StackError, OSError, RedisError) as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")
                self.log(f"supervisor: watching the Redis primary failed: {exc}")

    def _force_redis_failover(self, port: int) -> str:
        said = redis_server.force_failover(self.settings)
        until = time.monotonic() + FORCE_RETRY_FOR_S
        while "NOGOODSLAVE" in said and time.monotonic() < until:
            if self._stop.wait(FORCE_RETRY_S):
                break
            named = redis_server.sentinel_primary(self.settings)
            if named is None or named[1] != port:
                return f"{said}; the Sentinels have failed over since"
            said = redis_server.force_failover(self.settings)
        return said

    def _watch_jobmanagers(self) -> None:
        """Every ``JOBMANAGER_WATCH_S``: fence a JobManager gone silent, and release a dead
        leader's ZooKeeper session (``_fence_silent_jobmanagers``), apart from the rounds,
        which a JobManager that does not answer slows down (each call to it waits out its
        timeout) when it matters most: before the network heals, or the standby leads."""
        while not self._stop.wait(JOBMANAGER_WATCH_S):
            try:
                self._fence_silent_jobmanagers()
            except (StackError, OSError) as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")
                self.log(f"supervisor: fencing a silent JobManager failed: {exc}")

    def start(self, interval_s: float = 1.0) -> Supervisor:
        self._thread = threading.Thread(target=self.run, args=(interval_s,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in (self._thread, self._warming, self._watching, self._fencing,
                       self._redis_watch):
            if thread is not None:
                thread.join(timeout=300)


def pipeline_submitter(settings: Settings) -> Submit:
    """Submit jobs/pipeline.py to the session cluster, from a checkpoint or savepoint if given."""
    pipeline = str(settings.root / "jobs" / "pipeline.py")

    def submit(restore: str | None) -> str:
        return flink.submit_python_job(settings, pipeline, [], from_savepoint=restore)

    return submit
