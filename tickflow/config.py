"""Typed, frozen configuration for every tickflow component.

Values come from ``config/tickflow.yaml``, then each overlay file named in ``TICKFLOW_CONFIG``
(colon-separated), then environment variables ``TICKFLOW__<SECTION>__<KEY>``: kept as typed
for a text setting (a password ``0123`` stays ``0123``), converted by the setting's type
otherwise (``true``/``false`` for a flag, YAML for a list or a mapping). ``TICKFLOW_HOME``
names the project root when the code is not run from a checkout. Unknown keys and missing
required values fail fast with the offending key in the message.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

ENV_PREFIX = "TICKFLOW__"


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type."""


def project_root() -> Path:
    """The repository root (or ``TICKFLOW_HOME``): where ``config/`` and ``flink-conf/`` live."""
    home = os.environ.get("TICKFLOW_HOME")
    return Path(home).resolve() if home else Path(__file__).resolve().parents[1]


KAFKA_SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
RAW_FRAMINGS = ("schemaless", "confluent")
RESULT_FORMATS = ("json", "avro")
KAFKA_SASL_MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN")
# a file setting may name the state directory: "{state_dir}/secrets/redis.password"
STATE_DIR_PLACEHOLDER = "{state_dir}"


@dataclass(frozen=True)
class KafkaConfig:
    bootstrap: str
    controller_port: int
    heap_mb: int
    raw_topic: str
    raw_partitions: int
    deadletter_topic: str
    control_topic: str
    producer_linger_ms: int
    # produce requests in flight per broker for the idempotent raw producers: 1, or a leader
    # change can write a frame twice (config/tickflow.yaml)
    producer_max_in_flight: int
    # the connectors' librdkafka delivery timeout: a raw frame not acknowledged by then fails,
    # and its book is marked sync_lost and resynced (connectors/producer.py)
    delivery_timeout_ms: int
    # frames the connectors' producer may hold waiting for the broker; beyond it a frame is
    # dropped and its book marked sync_lost, the event loop never blocks
    producer_queue_max_messages: int
    # the job's results, written exactly-once (Kafka transactions committed at checkpoints)
    nbbo_topic: str
    matched_trades_topic: str
    bars_topic: str
    touches_topic: str
    transaction_timeout_ms: int
    # SASL_SSL (the local stack: SCRAM over TLS with client certificates) | SSL (TLS
    # listeners, e.g. Amazon MSK's port 9094) | SASL_PLAINTEXT | PLAINTEXT (compose network).
    # Clients are configured from these by tickflow.kafka_security, in one place.
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = "SCRAM-SHA-512"
    sasl_username: str = ""
    sasl_password: str = field(default="", repr=False)  # "": read from sasl_password_file
    sasl_password_file: str = ""
    # TLS: the CA that signed the brokers' certificates ("": the system's), and the client's
    # own certificate and key (PEM, mutual TLS; "": none). librdkafka reads the PEM files;
    # the JVM clients (the Flink job) read the same in PKCS12 stores. A file setting whose
    # file does not exist is left out (the local stack's defaults before `stack up`, or a
    # deployment that does not use them).
    ssl_ca_file: str = ""
    ssl_cert_file: str = ""
    ssl_key_file: str = ""
    ssl_keystore_file: str = ""  # PKCS12: the client's key and certificate (JVM clients)
    ssl_truststore_file: str = ""  # PKCS12: the CA (JVM clients)
    ssl_store_password: str = field(default="", repr=False)  # "": from ssl_store_password_file
    ssl_store_password_file: str = ""
    # replicas of every topic the stack creates, and how many must have a write before it is
    # acknowledged (acks=all); the HA profile runs a broker per bootstrap address, 3 and 2
    replication_factor: int = 1
    min_insync_replicas: int = 1
    # every client (connectors, the job's source and sinks): how long a request to a broker
    # may go unanswered before the connection is dropped and retried elsewhere, and how old
    # its idea of each partition's leader may get before it asks again. Kafka's defaults (30
    # s, 5 min) suit a broker that fails by closing its connections; one cut off the network
    # closes nothing, and the clients went on waiting on it (config/ha.yaml: 5 s, 1 s)
    request_timeout_ms: int = 30000
    metadata_max_age_ms: int = 300000
    # the longest a client waits between retries and reconnects, 0: the clients' own (1 s
    # between retries; 1 s and 10 s between reconnects, Java and librdkafka). Retries back off
    # exponentially, so while a lost node is being fenced they reach the cap, and the new
    # leader was found up to that long after it was elected (config/ha.yaml: 250 ms)
    retry_backoff_max_ms: int = 0
    # how long a Java client waits for a TCP connection to a broker before it gives up on it
    # (0: Kafka's 10-30 s). A Java client asks no other broker for leaders meanwhile, so a
    # connection to a node cut off the network held the job's source and sinks back that long
    # (config/ha.yaml: 500 ms; librdkafka asks another broker)
    connect_timeout_ms: int = 0
    # the local stack's nodes: "" on loopback; an interface address such as "10.77.0.1/24":
    # each node a host of its own (a network namespace on a bridge where this machine has that
    # address, stack.netns) at its bootstrap address, which must be in that subnet, so a drill
    # can cut one off the network (bench/ha_drill.py's kafka-partition); needs root
    node_network: str = ""
    # with node_network: each controller on a host of its own at these addresses (one per
    # broker, in the same subnet), as Kafka's production layout runs them; "" beside its broker.
    # Beside it, a cut of the broker's host also took the quorum's leader when it was there,
    # and the books waited for an election besides (config/netns.yaml)
    controller_hosts: str = ""
    # how long the supervisor waits before it starts a lost node of a cluster again (0: at
    # once). A Kafka JVM starting took the two cores from the brokers taking over the lost
    # node's partitions: 0.5-0.8 s more before writes were acknowledged again
    # (config/ha.yaml: 10 s)
    replacement_delay_ms: int = 0
    # the supervisor unregisters a broker as soon as its process is gone (a crash, a kill):
    # the controllers move its partitions at once instead of after its session timeout (2 s
    # of stale books); it registers again when started (config/ha.yaml: on)
    unregister_lost_brokers: bool = False
    # the supervisor fences a broker that has refused connections this long while another
    # broker accepts them (0: never): cut off the network, it keeps its partitions' leadership
    # until its session times out (2 s), and every acks=all write waits on it meanwhile; fenced,
    # its processes (the broker and the controller on its host) are killed, its clients'
    # connections to it reset and the broker unregistered (config/ha.yaml: 500 ms)
    fence_silent_broker_ms: int = 0
    # how the connectors write raw envelopes: "schemaless" (the Avro body alone) or
    # "confluent" (byte 0, the registry id of their schema, the body: docs/schemas.md). Every
    # reader takes both; "confluent" needs the schema registered (`stack up` does) and the
    # registry answering when a connector starts and when a reader meets a new id.
    raw_framing: str = "schemaless"
    # the job's result topics (nbbo, matched trades, bars, touches): "json" (one object per
    # record) or "avro" (framed with the registry id of the topic's schema, which `stack up`
    # registers; the job looks the ids up when it is submitted and refuses to start without)
    result_format: str = "json"

    def __post_init__(self) -> None:
        if self.raw_framing not in RAW_FRAMINGS:
            raise ConfigError(
                f"kafka.raw_framing must be one of {RAW_FRAMINGS}, got {self.raw_framing!r}"
            )
        if self.result_format not in RESULT_FORMATS:
            raise ConfigError(
                f"kafka.result_format must be one of {RESULT_FORMATS}, got {self.result_format!r}"
            )
        if self.security_protocol not in KAFKA_SECURITY_PROTOCOLS:
            raise ConfigError(
                f"kafka.security_protocol must be one of {KAFKA_SECURITY_PROTOCOLS}, "
                f"got {self.security_protocol!r}"
            )
        if self.sasl_mechanism not in KAFKA_SASL_MECHANISMS:
            raise ConfigError(
                f"kafka.sasl_mechanism must be one of {KAFKA_SASL_MECHANISMS}, "
                f"got {self.sasl_mechanism!r}"
            )

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")

    def addresses(self) -> list[tuple[str, int]]:
        """(host, port) of every bootstrap address: the local stack runs a broker on each."""
        out = []
        for address in filter(None, (a.strip() for a in self.bootstrap.split(","))):
            host, _, port = address.rpartition(":")
            out.append((host, int(port)))
        return out

    def controller_addresses(self) -> list[str]:
        """The controllers' hosts of their own (``controller_hosts``), [] beside the brokers."""
        return [h.strip() for h in self.controller_hosts.split(",") if h.strip()]

    @property
    def uses_tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    def result_topics(self) -> dict[str, str]:
        """ClickHouse table of a result -> the exactly-once topic it is also written to."""
        return {
            "nbbo": self.nbbo_topic,
            "matched_trades": self.matched_trades_topic,
            "bars": self.bars_topic,
            "top_of_book": self.touches_topic,
        }

    @property
    def host(self) -> str:
        return self.bootstrap.split(",")[0].rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.bootstrap.split(",")[0].rsplit(":", 1)[1])


@dataclass(frozen=True)
class RedisConfig:
    host: str
    port: int
    db: int
    key_prefix: str
    # the job's client: a Redis that does not answer within these fails the job, which restores
    # from its checkpoint (version-guarded writes make the replay harmless)
    socket_connect_timeout_ms: int = 2000
    socket_timeout_ms: int = 5000
    password: str = field(default="", repr=False)  # AUTH token (ElastiCache: with tls); "": none
    tls: bool = False
    # where the password is read from when `password` is "" (the local stack generates it);
    # a file that does not exist: no password
    password_file: str = ""
    live_lease_ms: int = 5000  # books/NBBOs read EXPIRED this long after the job stops (0: off)
    # high availability (config/ha.yaml): a replica of the primary on this port (0: none), and
    # Sentinels on these ports ("26379,26380,26381", on `host`; or "host:port,..." where each
    # runs elsewhere, as in compose; "": none) that every client asks for the current primary
    # of `sentinel_service`; a write that finds the primary gone waits up to
    # failover_wait_ms for the Sentinels to promote the replica before the job fails
    replica_port: int = 0
    sentinel_ports: str = ""
    sentinel_service: str = "tickflow"
    sentinel_down_after_ms: int = 1000
    failover_wait_ms: int = 10_000

    def sentinels(self) -> list[tuple[str, int]]:
        out = []
        for entry in filter(None, (e.strip() for e in self.sentinel_ports.split(","))):
            host, _, port = entry.rpartition(":")
            out.append((host or self.host, int(port)))
        return out


@dataclass(frozen=True)
class ClickHouseConfig:
    host: str
    port: int
    http_port: int
    database: str
    user: str
    password: str = field(repr=False)  # never in logs or error messages
    insert_batch_rows: int
    insert_interval_ms: int
    # the job's sink (jobs/jvm ClickHouseRowBinaryWriter): an insert not answered within
    # insert_timeout_ms is retried (backoff up to retry_max_backoff_ms) while rows wait, up to
    # max_pending_mb, in the sink's checkpointed state; then the sink backpressures the job
    connect_timeout_ms: int
    insert_timeout_ms: int
    retry_max_backoff_ms: int
    max_pending_mb: int
    secure: bool = False  # TLS on the native protocol (e.g. port 9440)
    # where the password is read from when `password` is "" (the local stack generates it);
    # a file that does not exist: no password
    password_file: str = ""
    # HA: a second server (replica_host, "": host; replica_port / replica_http_port, 0: one
    # server) with every table replicated between the two through ZooKeeper: writers and
    # readers go to whichever answers. The local stack's servers fetch each other's parts from
    # their interserver ports (on one host, each its own).
    replica_host: str = ""
    replica_port: int = 0
    replica_http_port: int = 0
    interserver_port: int = 9009
    replica_interserver_port: int = 9010

    @property
    def replicated(self) -> bool:
        return self.replica_http_port > 0

    def servers(self) -> list[ClickHouseConfig]:
        """A single-server configuration per server: the primary first, then the replica
        (what a writer or reader tries next)."""
        if not self.replicated:
            return [self]
        alone = dataclasses.replace(self, replica_port=0, replica_http_port=0)
        replica = dataclasses.replace(
            alone,
            host=self.replica_host or self.host,
            port=self.replica_port,
            http_port=self.replica_http_port,
        )
        return [alone, replica]


FLINK_STATE_BACKENDS = ("hashmap", "rocksdb")  # Flink's state.backend.type values


@dataclass(frozen=True)
class FlinkConfig:
    rest_port: int
    rpc_port: int
    parallelism: int
    python_execution_mode: str
    checkpoint_interval_ms: int
    # longest a record waits in a network buffer between operators before it is sent
    buffer_timeout_ms: int
    watermark_out_of_orderness_ms: int
    watermark_idle_timeout_ms: int
    consumer_group: str
    state_backend: str  # the job's state.backend.type: hashmap | rocksdb
    # failure drills only: when this file appears, the job's Python code raises once
    python_fault_file: str
    # jars the job adds itself ("path;path"): only a run outside a cluster (a local
    # MiniCluster) needs them; every cluster we run has the Kafka connector and the JVM
    # operators on its classpath (the local stack's lib/, the docker image, AWS's jarfile)
    job_jars: str = ""
    # the JVM bundler hands the compiled core this many frames of an instrument per call, or
    # what it holds after bundle_max_delay_ms (and always before a watermark or a checkpoint)
    bundle_max_frames: int = 64
    bundle_max_delay_ms: int = 5
    # where a live job with no state to restore starts reading the raw topic:
    # "partition:offset,..." (every partition named); "": from the group's committed offsets
    # (none: the earliest). A restore resumes from its checkpointed offsets either way.
    start_offsets: str = ""
    # `tickflow demo up` with no state to restore: a backlog above this many records is not
    # read by the live job (its books would stay dark behind it) but stored by a backfill
    catch_up_max_records: int = 200_000
    # high availability (config/ha.yaml): ZooKeeper on this port holds the leading JobManager
    # and the running jobs with their latest checkpoints (0: no HA, one JobManager, which
    # forgets its jobs when it dies); a standby JobManager serves REST on standby_rest_port and
    # takes the jobs over once the leader's ZooKeeper session (ha_session_timeout_ms) expires
    ha_zookeeper_port: int = 0
    standby_rest_port: int = 0
    ha_session_timeout_ms: int = 4000
    # each JobManager in a cgroup of its own that stack.cutoff can cut off the network
    partitionable_jobmanagers: bool = False
    # ZooKeeper nodes from ha_zookeeper_port on: 1 runs standalone; 3 form an ensemble that
    # keeps serving (and the JobManager its leadership) while any two are up
    ha_zookeeper_nodes: int = 1
    # TaskManagers the cluster starts: more than the job's slots need leaves a spare that the
    # job restarts on at once when the one it runs on dies (the HA profile runs two)
    taskmanagers: int = 1
    # how often the JobManager and TaskManagers exchange heartbeats, and after how long without
    # one a TaskManager counts as lost and its tasks restart elsewhere (0: Flink's 10 s / 50 s;
    # a SIGKILLed TaskManager is noticed after two refused heartbeats either way)
    heartbeat_interval_ms: int = 0
    heartbeat_timeout_ms: int = 0
    # heartbeat calls refused in a row before a TaskManager counts as lost (0: Flink's 2): a
    # killed one refuses them at once, a paused one only goes silent (heartbeat_timeout_ms)
    heartbeat_rpc_failure_threshold: int = 0
    # how long a failed job waits before its first restart (0: flink-conf's 1 s; the wait
    # doubles while it keeps failing)
    restart_backoff_ms: int = 0
    # with a standby JobManager or a spare TaskManager, how long the supervisor waits before
    # starting a new one in place of the one the job failed over from (0: at once): a JVM
    # starting on a small machine takes CPU from the job while it recovers on the other
    replacement_delay_ms: int = 0
    # with a standby: a JobManager silent on its REST port for this long while the other
    # answers is killed by the supervisor, its queued messages with it (0: never)
    fence_silent_jobmanager_ms: int = 0
    # with a standby: once the leading JobManager's process is gone, the supervisor deletes the
    # ZooKeeper nodes its session holds (what the session's expiry would delete), so the
    # standby leads at once instead of ha_session_timeout_ms later
    release_lost_leadership: bool = False
    # the Kafka result sinks chained into the books task (true: no copy of the sink blobs) or
    # in tasks of their own (false, the HA profile): a sink waiting on a lost broker (its
    # flush at a checkpoint, its commit) then no longer stops the books. Measured on Kafka
    # node kills and cuts: mean stale books 3.1 s / 9.0 s in tasks of their own against
    # 5.9 s / 12.5 s chained (docs/runbooks/broker-loss.md)
    result_sinks_chained: bool = True

    @property
    def ha(self) -> bool:
        return self.ha_zookeeper_port > 0

    def zookeeper_client_ports(self) -> list[int]:
        """Each ZooKeeper node's client port (HA), node 1 first."""
        return [self.ha_zookeeper_port + i for i in range(self.ha_zookeeper_nodes)]

    def rest_ports(self) -> list[int]:
        """The JobManagers' REST ports: the first started, then the standby (HA)."""
        return [self.rest_port, *([self.standby_rest_port] if self.standby_rest_port else [])]

    def __post_init__(self) -> None:
        if self.state_backend not in FLINK_STATE_BACKENDS:
            raise ConfigError(
                f"flink.state_backend must be one of {FLINK_STATE_BACKENDS}, "
                f"got {self.state_backend!r}"
            )
        self.start_offsets_by_partition()  # fails here, not at job submission
        if self.ha_zookeeper_nodes not in (1, 3, 5):
            raise ConfigError(
                f"flink.ha_zookeeper_nodes must be 1, 3 or 5 (a majority decides), got "
                f"{self.ha_zookeeper_nodes}"
            )
        if self.taskmanagers < 1:
            raise ConfigError(f"flink.taskmanagers must be at least 1, got {self.taskmanagers}")
        if self.heartbeat_timeout_ms and self.heartbeat_timeout_ms <= self.heartbeat_interval_ms:
            raise ConfigError(
                f"flink.heartbeat_timeout_ms ({self.heartbeat_timeout_ms}) must exceed "
                f"flink.heartbeat_interval_ms ({self.heartbeat_interval_ms})"
            )

    def start_offsets_by_partition(self) -> dict[int, int]:
        """``start_offsets`` parsed: partition -> offset ({}: not set)."""
        out: dict[int, int] = {}
        for item in filter(None, (part.strip() for part in self.start_offsets.split(","))):
            partition, sep, offset = item.partition(":")
            try:
                if not sep or int(partition) < 0 or int(offset) < 0:
                    raise ValueError(item)
                out[int(partition)] = int(offset)
            except ValueError:
                raise ConfigError(
                    f"flink.start_offsets: {item!r} is not partition:offset (non-negative)"
                ) from None
        return out


@dataclass(frozen=True)
class ReplayConfig:
    """A bounded replay of the raw topic (``tickflow job replay``); to_ms 0: the live job."""

    from_ms: int  # first record time replayed; 0: the earliest the topic retains
    to_ms: int  # records before this time are replayed, then the job finishes
    speed: float  # 0: as fast as the job goes; N: N x real time (by record time)
    batch_workers: int  # the batch backfill's processes; 0: one per core
    batch_read_records: int  # records per Kafka read in the batch backfill
    # a book as of a time (jobs/book_at.py): frames received up to this long after the time
    # are read for the book's first event after it (which shows nothing before it was missed)
    book_at_lookahead_ms: int = 5_000
    # the longest stretch of frames read from the book's last sync point to the time
    book_at_max_scan_ms: int = 3_600_000

    @property
    def active(self) -> bool:
        return self.to_ms > 0


@dataclass(frozen=True)
class ApiConfig:
    """The research query API (``tickflow api``, ``api/``). Environment:
    ``TICKFLOW__API__<KEY>``, e.g. ``TICKFLOW__API__PORT=8400``."""

    host: str = "127.0.0.1"  # loopback unless deliberately exposed
    port: int = 8300
    # API keys, hashed (SHA-256), with scopes, expiry and limits; 0600 in a 0700 directory
    keys_file: str = "{state_dir}/secrets/api-keys.json"
    rate_per_s: float = 20.0  # per key: requests per second, refilled continuously...
    burst: int = 40  # ...up to this many at once (a key created with --rate/--burst overrides)
    default_page_rows: int = 1000  # rows per page when a request names no limit
    max_page_rows: int = 100000  # the largest limit a request may ask for
    # POST /v1/replay (the backtest's event stream): the longest range and the most events
    replay_max_range_ms: int = 3_600_000
    replay_max_events: int = 1_000_000
    replay_source: str = "kafka"  # where its frames are read: kafka | archive


@dataclass(frozen=True)
class BacktestConfig:
    """Raw frames through the compiled core for a strategy (``jobs/backtest.py``,
    ``tickflow backtest``). Environment: ``TICKFLOW__BACKTEST__<KEY>``."""

    # frames fed to the core at a time: fixed, so the order of delivery does not depend on
    # how the source happens to batch its reads
    chunk_records: int = 1000
    # a partition's rows are held until the core's watermark is this far past their event
    # time, then delivered in event-time order; a row the core emits later than that is
    # delivered at once (counted as a late delivery)
    reorder_ms: int = 1000
    taker_fee_bps: float = 5.0  # the fill model's fees, bps of the notional
    maker_fee_bps: float = 1.0


REGISTRY_COMPATIBILITY = (
    "BACKWARD", "BACKWARD_TRANSITIVE", "FORWARD", "FORWARD_TRANSITIVE",
    "FULL", "FULL_TRANSITIVE", "NONE",
)  # fmt: skip


@dataclass(frozen=True)
class RegistryConfig:
    """The schema registry (Apicurio Registry, its Confluent-compatible API; ``schemas/
    registry.py``, docs/schemas.md). Environment: ``TICKFLOW__REGISTRY__<KEY>``."""

    host: str = "127.0.0.1"
    port: int = 8085
    # the Apicurio Registry release the local stack resolves from Maven Central; the compose
    # file runs the image of the same version
    version: str = "3.0.9"
    heap_mb: int = 256
    # every subject's compatibility level (docs/schemas.md says why FULL_TRANSITIVE)
    compatibility: str = "FULL_TRANSITIVE"
    # HTTP basic auth; "" password: read from password_file (the local stack generates it);
    # neither: no Authorization header (a registry without auth)
    username: str = "tickflow"
    password: str = field(default="", repr=False)
    password_file: str = "{state_dir}/secrets/registry.password"
    timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if self.compatibility not in REGISTRY_COMPATIBILITY:
            raise ConfigError(
                f"registry.compatibility must be one of {REGISTRY_COMPATIBILITY}, "
                f"got {self.compatibility!r}"
            )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@dataclass(frozen=True)
class ArchiveConfig:
    """The raw archive (``tickflow archive run``, ``jobs/archive.py``, docs/archive.md): the raw
    topic as Parquet files beyond Kafka's retention. Environment:
    ``TICKFLOW__ARCHIVE__<KEY>``, e.g. ``TICKFLOW__ARCHIVE__DIR=/data/archive``."""

    dir: str = "{state_dir}/archive"  # files under <dir>/<topic>/date=.../partition=P/
    roll_records: int = 2_000_000  # a file is closed at this many records...
    roll_seconds: float = 900.0  # ...or this long after its first record (wall clock)
    row_group_records: int = 100_000  # written to the open file at a time (bounds memory)
    read_batch_records: int = 10_000  # records per FrameBatch read back from the files
    consumer_group: str = "tickflow-archive"  # offsets committed for lag monitoring only
    metrics_port: int = 0  # Prometheus /metrics of the archiver; 0: not served
    metrics_host: str = "127.0.0.1"


@dataclass(frozen=True)
class BookConfig:
    top_n: int
    max_levels: int
    snapshot_interval_ms: int
    max_buffered_updates: int
    resync_retry_ms: int
    stale_after_ms: int
    timer_interval_ms: int
    # frames whose event time is further from their receive time are rejected (0: no limit)
    max_event_ahead_ms: int = 300_000
    max_event_behind_ms: int = 0


@dataclass(frozen=True)
class AnalyticsConfig:
    nbbo_stale_after_ms: int
    quote_equivalents: Mapping[str, str]
    bar_intervals_ms: tuple[int, ...]
    depth_band_bps: int
    trade_dedup_ms: int


@dataclass(frozen=True)
class MonitoringConfig:
    prometheus_port: int
    scrape_interval_s: int
    flink_metrics_ports: str  # port range of Flink's Prometheus reporter, e.g. "9249-9252"
    connector_metrics_ports: Mapping[str, str]  # exchange -> port of its /metrics
    dashboard_port: int
    alert_webhook: str  # alerts are forwarded here (POST JSON); "" = nowhere
    log_level: str
    log_format: str  # json | text
    # where connectors serve /metrics: loopback, or every interface in a container (0.0.0.0)
    connector_metrics_host: str = "127.0.0.1"
    # the bearer token the dashboard's write endpoints (POST /api/v2/alerts) require; "":
    # read from dashboard_token_file (the local stack generates it). Neither: writes refused
    dashboard_token: str = field(default="", repr=False)
    dashboard_token_file: str = field(default="", repr=False)
    # Prometheus' blackbox exporter, which tries every component's ports every
    # probe_interval_s (the ComponentDown alert); 0: none
    blackbox_port: int = 0
    probe_interval_s: int = 1
    # Prometheus' Redis exporter, which reads every Redis process (primary, replica,
    # Sentinels) every probe_interval_s (RedisRestarted, RedisFailover); 0: none
    redis_exporter_port: int = 0


@dataclass(frozen=True)
class SimulatorConfig:
    """The exchange simulator (``simulator/``). Environment:
    ``TICKFLOW__SIMULATOR__<KEY>``, e.g. ``TICKFLOW__SIMULATOR__KRAKEN_RATE_PER_SYMBOL=200``.
    """

    host: str
    port: int
    seed: int
    rate_per_symbol: float
    depth_levels: int
    id_epoch_s: int
    symbols: tuple[str, ...]
    max_changes_per_event: int
    trade_probability: float
    send_queue_max: int
    send_log_frames: int
    max_connection_age_s: int
    coinbase_products: tuple[str, ...]  # products of the simulated Coinbase venue
    coinbase_depth_levels: int  # true book depth per side (in-band snapshots are whole books)
    coinbase_heartbeat_ms: int  # heartbeats interval (Coinbase: 1 s); 0: none
    kraken_symbols: tuple[str, ...]  # pairs of the simulated Kraken venue (simulator/kraken.py)
    # market steps/s per symbol of each venue (one book update each, and its taker's trades);
    # 0: rate_per_symbol. Ceiling of this machine: bench/results/simulator_rates.json
    binance_rate_per_symbol: float = 0.0
    coinbase_rate_per_symbol: float = 0.0
    kraken_rate_per_symbol: float = 0.0
    # times each venue's chance that a taker sweeps several levels (one trade per level,
    # sharing one time); 0: every taker takes from the touch only
    sweep_scale: float = 1.0

    def rate(self, venue: str) -> float:
        """Steps/s per symbol of one venue (``<venue>_rate_per_symbol``, else the default)."""
        own = getattr(self, f"{venue}_rate_per_symbol", 0.0)
        return float(own) if own > 0 else self.rate_per_symbol


@dataclass(frozen=True)
class BinanceConfig:
    ws_url: str
    rest_url: str
    depth_stream: str
    snapshot_limit: int
    snapshot_max_attempts: int
    snapshot_stagger_ms: int
    rest_weight_limit_1m: int
    symbols: Mapping[str, str]  # exchange symbol -> canonical instrument

    def instrument(self, symbol: str) -> str:
        try:
            return self.symbols[symbol]
        except KeyError:
            raise ConfigError(
                f"binance symbol {symbol!r} is not in exchanges.binance.symbols"
            ) from None


@dataclass(frozen=True)
class CoinbaseConfig:
    """Coinbase Advanced Trade public market data (``connectors/coinbase.py``).

    Every key has a default (the real exchange), so configurations without an
    ``exchanges.coinbase`` section keep loading. Environment:
    ``TICKFLOW__EXCHANGES__COINBASE__<KEY>``, e.g. ``..._WS_URL``.
    """

    ws_url: str = "wss://advanced-trade-ws.coinbase.com"
    message_interval_ms: int = 150  # spacing of subscribe/unsubscribe messages (~8/s per IP)
    # exchange product -> canonical instrument (BASE-QUOTE); USD and USDT are different quotes
    symbols: Mapping[str, str] = field(
        default_factory=lambda: {"BTC-USD": "BTC-USD", "ETH-USD": "ETH-USD"}
    )

    def instrument(self, symbol: str) -> str:
        try:
            return self.symbols[symbol]
        except KeyError:
            raise ConfigError(
                f"coinbase product {symbol!r} is not in exchanges.coinbase.symbols"
            ) from None


KRAKEN_BOOK_DEPTHS = (10, 25, 100, 500, 1000)  # what a Kraken book subscription may ask for


@dataclass(frozen=True)
class KrakenConfig:
    """Kraken spot WebSocket v2 public market data (``connectors/kraken.py``).

    Every key has a default (the real exchange), so configurations without an
    ``exchanges.kraken`` section keep loading. Environment:
    ``TICKFLOW__EXCHANGES__KRAKEN__<KEY>``, e.g. ``..._BOOK_DEPTH=100``.
    """

    ws_url: str = "wss://ws.kraken.com/v2"
    book_depth: int = 25  # levels per side of each book subscription: 10, 25, 100, 500, 1000
    subscribe_batch: int = 10  # symbols per subscribe request
    message_interval_ms: int = 200  # spacing of subscribe/unsubscribe requests (stagger)
    # exchange pair -> canonical instrument (BASE-QUOTE); USD and USDT are different quotes
    symbols: Mapping[str, str] = field(
        default_factory=lambda: {"BTC/USD": "BTC-USD", "ETH/USD": "ETH-USD"}
    )

    def __post_init__(self) -> None:
        if self.book_depth not in KRAKEN_BOOK_DEPTHS:
            raise ConfigError(
                f"exchanges.kraken.book_depth must be one of {KRAKEN_BOOK_DEPTHS}, "
                f"got {self.book_depth}"
            )
        if self.subscribe_batch < 1:
            raise ConfigError("exchanges.kraken.subscribe_batch must be >= 1")

    def instrument(self, symbol: str) -> str:
        try:
            return self.symbols[symbol]
        except KeyError:
            raise ConfigError(
                f"kraken pair {symbol!r} is not in exchanges.kraken.symbols"
            ) from None


@dataclass(frozen=True)
class ConnectorConfig:
    """Connection lifecycle shared by every exchange connector (``connectors/base.py``).

    Environment: ``TICKFLOW__CONNECTORS__<KEY>``, e.g. ``TICKFLOW__CONNECTORS__STALE_TIMEOUT_S``.
    """

    open_timeout_s: float
    ping_interval_s: float
    ping_timeout_s: float
    stale_timeout_s: float
    backoff_initial_s: float
    backoff_max_s: float
    backoff_jitter: float
    backoff_reset_s: float
    max_frame_bytes: int
    rest_timeout_s: float
    flush_timeout_s: float
    resync_min_interval_s: float


@dataclass(frozen=True)
class ExchangesConfig:
    binance: BinanceConfig
    coinbase: CoinbaseConfig = field(default_factory=CoinbaseConfig)  # optional section
    kraken: KrakenConfig = field(default_factory=KrakenConfig)  # optional section


@dataclass(frozen=True)
class Settings:
    state_dir: Path
    cache_dir: Path
    kafka: KafkaConfig
    redis: RedisConfig
    clickhouse: ClickHouseConfig
    flink: FlinkConfig
    book: BookConfig
    analytics: AnalyticsConfig
    monitoring: MonitoringConfig
    simulator: SimulatorConfig
    connectors: ConnectorConfig
    exchanges: ExchangesConfig
    replay: ReplayConfig
    api: ApiConfig = field(default_factory=ApiConfig)
    archive: ArchiveConfig = field(default_factory=ArchiveConfig)
    backtest: BacktestConfig = field(default_factory=BacktestConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    root: Path = field(default_factory=project_root)


T = TypeVar("T")


def _deep_merge(base: dict[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


class EnvText(str):
    """A value from an environment variable, as typed: converted by the setting's type in
    `_coerce`, never parsed as YAML for a text setting (YAML would turn ``0123`` into 83 and
    ``yes`` into True, and its errors quote the value, which may be a secret)."""


_ENV_TRUE = {"true", "yes", "on", "1"}
_ENV_FALSE = {"false", "no", "off", "0"}


def _env_overlay(environ: Mapping[str, str]) -> dict[str, Any]:
    overlay: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX) :].split("__") if part]
        if not path:
            continue
        node = overlay
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = EnvText(raw)
    return overlay


def _from_env(hint_name: str, value: EnvText, key: str) -> Any:
    """An environment variable's text as the value a setting of this type takes."""
    if hint_name == "bool":
        word = value.strip().lower()
        if word in _ENV_TRUE | _ENV_FALSE:
            return word in _ENV_TRUE
        raise ConfigError(f"{key}: expected true or false")
    if hint_name.startswith(("tuple", "Mapping", "dict")):
        if value == "" and "None" in hint_name:
            return None
        try:
            return yaml.safe_load(value)
        except yaml.YAMLError:
            # the value itself is left out of the message: it may be a secret
            raise ConfigError(f"{key}: not a YAML list or mapping") from None
    return str(value)


def _build(cls: type[T], data: Any, where: str) -> T:
    """Build a frozen dataclass from a mapping, checking for unknown and missing keys."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(data) - set(fields)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}")
    kwargs: dict[str, Any] = {}
    hints = {name: f.type for name, f in fields.items()}
    for name, f in fields.items():
        key = f"{where}.{name}" if where else name
        if name not in data:
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING:
                continue
            raise ConfigError(f"missing required configuration value {key}")
        kwargs[name] = _coerce(hints[name], data[name], key)
    return cls(**kwargs)


_NESTED: dict[str, type] = {
    "KafkaConfig": KafkaConfig,
    "RedisConfig": RedisConfig,
    "ClickHouseConfig": ClickHouseConfig,
    "FlinkConfig": FlinkConfig,
    "BookConfig": BookConfig,
    "AnalyticsConfig": AnalyticsConfig,
    "MonitoringConfig": MonitoringConfig,
    "SimulatorConfig": SimulatorConfig,
    "ConnectorConfig": ConnectorConfig,
    "BinanceConfig": BinanceConfig,
    "CoinbaseConfig": CoinbaseConfig,
    "KrakenConfig": KrakenConfig,
    "ExchangesConfig": ExchangesConfig,
    "ReplayConfig": ReplayConfig,
    "ApiConfig": ApiConfig,
    "ArchiveConfig": ArchiveConfig,
    "BacktestConfig": BacktestConfig,
    "RegistryConfig": RegistryConfig,
}


def _coerce(hint: Any, value: Any, key: str) -> Any:
    hint_name = hint if isinstance(hint, str) else getattr(hint, "__name__", str(hint))
    if hint_name in _NESTED:
        return _build(_NESTED[hint_name], value, key)
    if isinstance(value, EnvText):
        value = _from_env(hint_name, value, key)
        if hint_name == "str":
            return value
        if hint_name in ("int", "float"):
            try:
                return int(value) if hint_name == "int" else float(value)
            except ValueError:
                raise ConfigError(f"{key}: expected a number") from None
    try:
        if hint_name == "int":
            if isinstance(value, bool):
                raise TypeError
            return int(value)
        if hint_name == "bool":
            if not isinstance(value, bool):
                raise TypeError
            return value
        if hint_name == "float":
            return float(value)
        if hint_name == "str":
            return str(value)
        if hint_name == "Path":
            return Path(value)
        if hint_name.startswith("tuple[int"):
            if not isinstance(value, list | tuple):
                raise TypeError
            return tuple(int(v) for v in value)
        if hint_name.startswith("tuple"):
            if not isinstance(value, list | tuple):
                raise TypeError
            return tuple(str(v) for v in value)
        if hint_name.startswith("Mapping"):
            if not isinstance(value, Mapping):
                raise TypeError
            return {str(k): str(v) for k, v in value.items()}
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: cannot use {value!r} as {hint_name}") from None
    return value


def load_settings(
    overlays: list[Path] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Load the layered configuration (see module docstring)."""
    environ = os.environ if environ is None else environ
    root = project_root()
    data: dict[str, Any] = yaml.safe_load((root / "config" / "tickflow.yaml").read_text())
    files = list(overlays or [])
    files += [Path(p) for p in environ.get("TICKFLOW_CONFIG", "").split(":") if p]
    for path in files:
        path = path if path.is_absolute() else root / path
        if not path.exists():
            raise ConfigError(f"overlay configuration file {path} does not exist")
        data = _deep_merge(data, yaml.safe_load(path.read_text()) or {})
    data = _deep_merge(data, _env_overlay(environ))
    settings = _build(Settings, data, "")
    settings = dataclasses.replace(
        settings,
        root=root,
        state_dir=(root / settings.state_dir).resolve(),
        cache_dir=(root / settings.cache_dir).resolve(),
    )
    return with_secret_files(settings)


# (section, file setting): every setting that names a file, resolved against the project
# root with {state_dir} replaced
_FILE_SETTINGS = (
    ("kafka", "sasl_password_file"),
    ("kafka", "ssl_ca_file"),
    ("kafka", "ssl_cert_file"),
    ("kafka", "ssl_key_file"),
    ("kafka", "ssl_keystore_file"),
    ("kafka", "ssl_truststore_file"),
    ("kafka", "ssl_store_password_file"),
    ("redis", "password_file"),
    ("clickhouse", "password_file"),
    ("monitoring", "dashboard_token_file"),
    ("api", "keys_file"),
    ("archive", "dir"),
    ("registry", "password_file"),
)
# (section, secret, the file it is read from when empty)
_SECRET_FILES = (
    ("kafka", "sasl_password", "sasl_password_file"),
    ("kafka", "ssl_store_password", "ssl_store_password_file"),
    ("redis", "password", "password_file"),
    ("clickhouse", "password", "password_file"),
    ("monitoring", "dashboard_token", "dashboard_token_file"),
    ("registry", "password", "password_file"),
)


def resolve_path(settings: Settings, value: str) -> str:
    """A file setting as an absolute path: ``{state_dir}`` replaced, relative to the root."""
    if not value:
        return ""
    path = Path(value.replace(STATE_DIR_PLACEHOLDER, str(settings.state_dir)))
    return str(path if path.is_absolute() else (settings.root / path).resolve())


def read_secret(path: str) -> str:
    """The secret in a file (one line; surrounding whitespace dropped); "" if there is none."""
    try:
        return Path(path).read_text().strip() if path else ""
    except FileNotFoundError:
        return ""
    except OSError as error:
        # the error names the file, never its content
        raise ConfigError(f"cannot read secret file {path}: {error.strerror}") from None


def with_secret_files(settings: Settings) -> Settings:
    """``settings`` with every file setting made absolute and every empty secret read from its
    file (a secret set in the configuration or the environment wins). Loading calls it; the
    local stack calls it again after generating the files."""
    sections: dict[str, dict[str, str]] = {}
    for section, name in _FILE_SETTINGS:
        config = getattr(settings, section)
        sections.setdefault(section, {})[name] = resolve_path(settings, getattr(config, name))
    for section, secret, file_name in _SECRET_FILES:
        config = getattr(settings, section)
        if not getattr(config, secret):
            value = read_secret(sections[section][file_name])
            if value:
                sections[section][secret] = value
    return dataclasses.replace(
        settings,
        **{
            section: dataclasses.replace(getattr(settings, section), **values)
            for section, values in sections.items()
        },
    )


@contextlib.contextmanager
def patched_environ(values: Mapping[str, str]) -> Iterator[None]:
    """Environment variables set for the block, as they were after it (overrides that
    ``load_settings``, the CLIs and the PyFlink client started in the block read)."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, old in saved.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old
