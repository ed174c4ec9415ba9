"""The deployable artifacts, checked by what runs without Docker or AWS: `docker compose
config`, hadolint, cfn-lint, the AWS application zip unpacked and its entry imported with only
the vendored dependencies and what the Flink runtime provides, and the runtime properties."""

from __future__ import annotations

import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging import tags as packaging_tags
from packaging.requirements import Requirement

from aws import package
from aws.runtime import (
    FIXED_OVERRIDES,
    SECRETS_GROUP,
    SETTINGS_GROUP,
    env_name,
    read_property_groups,
    secret_text,
    settings_environ,
)
from stack.kafka import BROKER_SESSION_TIMEOUT_MS, REPLICA_LAG_TIME_MAX_MS
from stack.prometheus import prometheus_config
from stack.system import StackError
from stack.validators import compose_config, run_linter, venv_tool
from tickflow.config import ConfigError, load_settings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker" / "compose.yaml"
COMPOSE_HA = ROOT / "docker" / "compose.ha.yaml"
DOCKERFILES = sorted((ROOT / "docker").glob("*.Dockerfile"))
TEMPLATE = ROOT / "aws" / "cloudformation.yaml"
# run to completion: nothing to probe
ONE_SHOT_SERVICES = {"kafka-topics", "job-submit", "schemas-register"}


class CloudFormationLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short tags (!Ref, !Sub, ...) read as plain values."""


def _any_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        return {suffix: loader.construct_scalar(node)}
    if isinstance(node, yaml.SequenceNode):
        return {suffix: loader.construct_sequence(node)}
    return {suffix: loader.construct_mapping(node)}  # type: ignore[arg-type]


CloudFormationLoader.add_multi_constructor("!", _any_tag)


# -- docker ------------------------------------------------------------------------------------


COMPOSE_PASSWORDS = {
    f"TICKFLOW_{name}_PASSWORD": f"test-{name.lower()}"
    for name in ("CLICKHOUSE", "REDIS", "REGISTRY", "GRAFANA")
}


@pytest.mark.slow
def test_compose_requires_every_password() -> None:
    for missing in COMPOSE_PASSWORDS:
        given = {k: v for k, v in COMPOSE_PASSWORDS.items() if k != missing}
        with pytest.raises(StackError, match=missing):
            compose_config(load_settings(), COMPOSE, given)


def test_compose_has_no_default_passwords() -> None:
    text = COMPOSE.read_text()
    for name in COMPOSE_PASSWORDS:
        assert f"${{{name}:-" not in text and f"${{{name}}}" not in text, name
        assert f"${{{name}:?" in text, name


@pytest.mark.slow
def test_compose_file_parses_and_every_service_is_checked() -> None:
    model = yaml.safe_load(compose_config(load_settings(), COMPOSE, COMPOSE_PASSWORDS))
    assert model["services"]["redis"]["command"][-1] == "test-redis"
    assert model["services"]["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == (
        "test-grafana"
    )
    services = model["services"]
    assert {"kafka", "jobmanager", "taskmanager", "clickhouse", "redis", "prometheus",
            "grafana", "simulator", "connector-binance", "registry"} <= set(services)  # fmt: skip
    registry = services["registry"]
    assert registry["environment"]["QUARKUS_SECURITY_USERS_EMBEDDED_USERS_TICKFLOW"] == (
        "test-registry"
    )
    # the image of the release the local stack runs
    assert registry["image"] == f"apicurio/apicurio-registry:{load_settings().registry.version}"
    for name, service in services.items():
        check = service.get("healthcheck", {})
        if name in ONE_SHOT_SERVICES:
            assert check.get("disable") is True, name
        else:
            assert check.get("test"), f"{name} has no health check"


@pytest.mark.slow
def test_compose_ha_profile_doubles_what_can_fail_over() -> None:
    """docker/compose.ha.yaml over compose.yaml: three Kafka brokers and three controllers of
    their own in one quorum, a Redis
    replica and three Sentinels, three ZooKeeper nodes, a standby JobManager and a spare
    TaskManager; every tickflow service reads config/docker-ha.yaml, which names them."""
    model = yaml.safe_load(
        compose_config(load_settings(), COMPOSE, COMPOSE_PASSWORDS, (COMPOSE_HA,))
    )
    services = model["services"]
    doubled = {"kafka-2", "kafka-3", "redis-replica", "redis-sentinel-1", "redis-sentinel-2",
               "redis-sentinel-3", "zookeeper-1", "zookeeper-2", "zookeeper-3", "jobmanager-2",
               "taskmanager-2", "clickhouse-2"}  # fmt: skip
    assert doubled <= set(services)
    voters = ",".join(f"{100 + i}@kafka-controller-{i}:9093" for i in (1, 2, 3))
    brokers = {f"kafka-{i}" if i > 1 else "kafka": (str(i), "broker") for i in (1, 2, 3)}
    controllers = {f"kafka-controller-{i}": (str(100 + i), "controller") for i in (1, 2, 3)}
    for name, (node, roles) in {**brokers, **controllers}.items():
        env = services[name]["environment"]
        assert env["KAFKA_NODE_ID"] == node and env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == voters
        assert env["KAFKA_PROCESS_ROLES"] == roles
        assert ("CONTROLLER://" in env["KAFKA_LISTENERS"]) == (roles == "controller"), name
        assert env["KAFKA_MIN_INSYNC_REPLICAS"] == "2"
        # the failover timings the local HA profile measured
        assert env["KAFKA_BROKER_SESSION_TIMEOUT_MS"] == str(BROKER_SESSION_TIMEOUT_MS)
        assert env["KAFKA_REPLICA_LAG_TIME_MAX_MS"] == str(REPLICA_LAG_TIME_MAX_MS)
    assert "--replicaof" in services["redis-replica"]["command"]
    for name, replica in (("clickhouse", "r1"), ("clickhouse-2", "r2")):
        clickhouse = services[name]
        assert clickhouse["hostname"] == name
        assert clickhouse["environment"]["TICKFLOW_CLICKHOUSE_REPLICA"] == replica
        mounts = {v["target"]: v for v in clickhouse["volumes"]}
        assert mounts["/var/lib/clickhouse"]["source"] == f"{name}-data"
        assert Path(mounts["/etc/clickhouse-server/config.d/replication.xml"]["source"]).is_file()
    replication = ET.parse(ROOT / "docker" / "clickhouse" / "replication.xml").getroot()
    assert [n.findtext("host") for n in replication.findall("zookeeper/node")] == [
        "zookeeper-1", "zookeeper-2", "zookeeper-3"
    ]  # fmt: skip
    for name, service in services.items():
        config = service.get("environment", {}).get("TICKFLOW_CONFIG")
        assert config is None or config.endswith(":config/docker-ha.yaml"), name
        if name in ONE_SHOT_SERVICES:
            continue
        assert service.get("healthcheck", {}).get("test"), f"{name} has no health check"
        image = service.get("image", "")
        _, _, tag = image.rpartition(":")
        assert tag and tag != "latest" and (re.match(r"v?\d", tag) or image.startswith("tickflow-"))
    for name in ("jobmanager", "jobmanager-2", "taskmanager", "taskmanager-2"):
        properties = services[name]["environment"]["FLINK_PROPERTIES"]
        assert "high-availability.type: zookeeper" in properties, name
    overlays = [ROOT / "config" / "docker.yaml", ROOT / "config" / "docker-ha.yaml"]
    settings = load_settings(overlays=overlays, environ={})
    assert {host for host, _ in settings.kafka.addresses()} == {"kafka", "kafka-2", "kafka-3"}
    assert {host for host, _ in settings.redis.sentinels()} <= set(services)
    assert settings.kafka.replication_factor == 3 and not settings.flink.result_sinks_chained
    assert [s.host for s in settings.clickhouse.servers()] == ["clickhouse", "clickhouse-2"]


def test_compose_images_are_pinned() -> None:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    for name, service in services.items():
        image = service.get("image", "")
        if "build" in service or image.startswith("tickflow-"):
            continue  # built here, from the pinned Dockerfiles
        _, _, tag = image.rpartition(":")
        assert tag and tag != "latest" and re.match(r"v?\d", tag), f"{name}: {image}"


def test_dockerfile_base_images_are_pinned() -> None:
    for dockerfile in DOCKERFILES:
        for line in dockerfile.read_text().splitlines():
            if line.startswith("FROM "):
                image = line.split()[1]
                assert ":" in image and not image.endswith(":latest"), f"{dockerfile}: {line}"


def test_dockerfiles_pass_hadolint() -> None:
    config = ROOT / "docker" / "hadolint.yaml"
    run_linter([str(venv_tool("hadolint")), "--config", str(config), *map(str, DOCKERFILES)])


def test_flink_image_runs_the_native_pipeline() -> None:
    """The image builds the JVM operators (jobs/jvm) and the compiled core (jobs/native) from
    source and puts them where the submitted job finds them without shipping jars: the
    operators in Flink's lib/ beside the connector, the core's wheel in the venv; the compose
    configuration does not ship the connector jars (the image has them)."""
    text = (ROOT / "docker" / "flink.Dockerfile").read_text()
    assert re.search(r"^FROM maven:\S+ AS ops$", text, re.MULTILINE)
    assert "COPY jobs/jvm/pom.xml /build/ops/pom.xml" in text
    assert re.search(r"^RUN mvn .*-f /build/ops/pom.xml package", text, re.MULTILINE)
    jar = "tickflow-flink-ops-1.jar"  # the pom's artifactId-version, no profile
    assert f"COPY --from=ops /build/ops/target/{jar} /opt/flink/lib/" in text
    pom = (ROOT / "jobs" / "jvm" / "pom.xml").read_text()
    assert "<artifactId>tickflow-flink-ops</artifactId>\n  <version>1</version>" in pom
    assert re.search(r"^COPY --from=native /build/wheels/ ", text, re.MULTILINE)
    assert re.search(r"^RUN pip install .*/tmp/wheels/\*\.whl", text, re.MULTILINE)
    submit = (ROOT / "docker" / "submit-job.sh").read_text()
    assert "import tickflow_native" in submit and "/opt/flink/lib/tickflow-flink-ops-" in submit
    assert "--python /opt/tickflow/jobs/pipeline.py" in submit
    compose = yaml.safe_load(COMPOSE.read_text())
    overlays = compose["x-tickflow-env"]["TICKFLOW_CONFIG"].split(":-", 1)[1].rstrip("}")
    settings = load_settings(environ={"TICKFLOW_CONFIG": overlays})
    assert settings.flink.job_jars == ""


def test_docker_prometheus_scrapes_the_local_stack_jobs() -> None:
    """Same job names as the generated local prometheus.yml: the rules and the Grafana
    dashboard select on them (the dashboard job is the local stack's alert receiver)."""
    settings = load_settings()
    local = prometheus_config(settings, ROOT / "monitoring" / "rules.yml")
    docker = yaml.safe_load((ROOT / "docker" / "prometheus.yml").read_text())
    local_jobs = {job["job_name"] for job in local["scrape_configs"]} - {"dashboard"}
    assert {job["job_name"] for job in docker["scrape_configs"]} == local_jobs
    interval = f"{settings.monitoring.scrape_interval_s}s"
    assert docker["global"]["scrape_interval"] == interval
    exchanges = {
        group["labels"]["exchange"]
        for job in docker["scrape_configs"]
        if job["job_name"] == "connectors"
        for group in job["static_configs"]
    }
    assert exchanges == set(settings.monitoring.connector_metrics_ports)


# -- AWS template ------------------------------------------------------------------------------


def test_cloudformation_template_passes_cfn_lint() -> None:
    run_linter([str(venv_tool("cfn-lint")), str(TEMPLATE)])


def test_cloudformation_run_options_match_the_zip_layout() -> None:
    template = yaml.load(TEMPLATE.read_text(), Loader=CloudFormationLoader)
    app = template["Resources"]["Application"]["Properties"]
    groups = {
        group["PropertyGroupId"]: group["PropertyMap"]
        for group in app["ApplicationConfiguration"]["EnvironmentProperties"]["PropertyGroups"]
    }
    jar = template["Parameters"]["JobJar"]["Default"]
    expected = package.run_options(jar.removeprefix(f"{package.LIB_DIR}/"))
    assert groups[package.RUN_OPTIONS_GROUP] == {**expected, "jarfile": {"Ref": "JobJar"}}
    assert jar == expected["jarfile"]
    # every tickflow property names a real setting; secrets only by ARN
    settings = load_settings()
    for setting in groups[SETTINGS_GROUP]:
        section, key = setting.split(".")
        assert hasattr(getattr(settings, section), key), setting
    assert set(groups[SECRETS_GROUP]) == {"clickhouse.password", "redis.password"}
    assert app["RuntimeEnvironment"] == "FLINK-2_2"


# -- runtime properties -> settings ------------------------------------------------------------


def test_runtime_properties_become_settings_overrides(tmp_path: Path) -> None:
    local = tmp_path / "application_properties.json"
    local.write_text(json.dumps([
        {"PropertyGroupId": SETTINGS_GROUP,
         "PropertyMap": {"kafka.bootstrap": "b-1:9094", "redis.tls": "true"}},
        {"PropertyGroupId": SECRETS_GROUP,
         "PropertyMap": {"clickhouse.password": "arn:aws:secretsmanager:eu-west-1:1:secret:ch",
                         "redis.password": "arn:aws:secretsmanager:eu-west-1:1:secret:rd"}},
    ]))  # fmt: skip
    secrets = {
        "arn:aws:secretsmanager:eu-west-1:1:secret:ch": "plain-secret",
        "arn:aws:secretsmanager:eu-west-1:1:secret:rd": json.dumps({"password": "token"}),
    }
    groups = read_property_groups(tmp_path / "absent.json", local)  # not on AWS: the fallback
    environ = settings_environ(groups, secrets.__getitem__)
    assert environ == {
        **FIXED_OVERRIDES,
        "TICKFLOW__KAFKA__BOOTSTRAP": "b-1:9094",
        "TICKFLOW__REDIS__TLS": "true",
        "TICKFLOW__CLICKHOUSE__PASSWORD": "plain-secret",
        "TICKFLOW__REDIS__PASSWORD": "token",
    }
    settings = load_settings(environ=environ)
    assert settings.kafka.bootstrap == "b-1:9094"
    assert settings.redis.tls is True and settings.redis.password == "token"
    assert settings.flink.job_jars == ""
    assert "token" not in repr(settings) and "plain-secret" not in repr(settings)


def test_runtime_property_names_are_dotted_settings() -> None:
    assert env_name("exchanges.binance.ws_url") == "TICKFLOW__EXCHANGES__BINANCE__WS_URL"
    for bad in ("bootstrap", "Kafka.Bootstrap", "kafka..x", "kafka.bootstrap servers"):
        with pytest.raises(ConfigError):
            env_name(bad)
    assert secret_text('{"username": "u", "password": "p"}') == "p"
    assert secret_text('["not", "an object"]') == '["not", "an object"]'


def test_application_properties_are_on_aws_when_present(tmp_path: Path) -> None:
    on_aws = tmp_path / "etc.json"
    on_aws.write_text(json.dumps([{"PropertyGroupId": "tickflow", "PropertyMap": {"a.b": 1}}]))
    assert read_property_groups(on_aws, tmp_path / "absent") == {"tickflow": {"a.b": "1"}}
    on_aws.write_text("{}")
    with pytest.raises(ConfigError, match="list of property groups"):
        read_property_groups(on_aws, tmp_path / "absent")


# -- the application zip -----------------------------------------------------------------------


def runtime_closure(distribution: str) -> set[str]:
    """``distribution`` and everything it requires on this interpreter (markers evaluated)."""
    seen: set[str] = set()
    todo = [distribution]
    while todo:
        name = todo.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen:
            continue
        seen.add(key)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for line in requires:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return seen


def top_level_paths(distribution: str) -> set[Path]:
    """The importable top-level packages and modules a distribution installed."""
    dist = importlib.metadata.distribution(distribution)
    paths: set[Path] = set()
    for file in dist.files or []:
        first = file.parts[0]
        if first.endswith((".dist-info", ".data")) or first in ("..", "bin", "__pycache__"):
            continue
        if len(file.parts) == 1 and not first.endswith((".py", ".so")):
            continue
        paths.add(Path(str(dist.locate_file(first))))
    return paths


def flink_runtime_dir(target: Path) -> Path:
    """What AWS Managed Flink's Python has: PyFlink and its dependencies (links into this venv)."""
    target.mkdir()
    for name in runtime_closure("apache-flink"):
        try:
            paths = top_level_paths(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        for path in paths:
            link = target / path.name
            if path.exists() and not link.exists():
                link.symlink_to(path)
    return target


@dataclass(frozen=True)
class AwsZip:
    unpacked: Path
    names: set[str]
    options: dict[str, str]
    properties: list[dict[str, Any]]


@pytest.fixture(scope="module")
def aws_zip(tmp_path_factory: pytest.TempPathFactory) -> AwsZip:
    """The real build (the core's wheel and the jar are cached by their sources' hash)."""
    tmp_path = tmp_path_factory.mktemp("aws-zip")
    # the runtime's Python is 3.12; the import check needs wheels for the interpreter it runs on
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    archive = package.build(load_settings(), tmp_path / "tickflow-aws.zip", python_version=version)
    unpacked = tmp_path / "unpacked"
    with zipfile.ZipFile(archive) as zipped:
        names = set(zipped.namelist())
        zipped.extractall(unpacked)
    properties = json.loads((unpacked / package.PROPERTIES).read_text())
    options = next(g["PropertyMap"] for g in properties
                   if g["PropertyGroupId"] == package.RUN_OPTIONS_GROUP)  # fmt: skip
    return AwsZip(unpacked, names, options, properties)


@pytest.mark.slow
def test_aws_zip_layout_and_entry_imports_with_vendored_dependencies(
    aws_zip: AwsZip, tmp_path: Path
) -> None:
    unpacked, names, options, properties = (
        aws_zip.unpacked, aws_zip.names, aws_zip.options, aws_zip.properties,
    )  # fmt: skip
    assert options["python"] in names and options["jarfile"] in names
    for directory in options["pyFiles"].split(","):
        assert any(name.startswith(directory) for name in names), directory
    assert {"app/jobs/pipeline.py", "app/config/tickflow.yaml", "app/aws/runtime.py"} <= names
    not_packed = ("app/stack/", "app/connectors/", "dep/pyflink")
    assert not any(name.startswith(not_packed) for name in names)
    # no secret in the zip: the packed properties name none, and only by ARN
    secrets = next(g["PropertyMap"] for g in properties if g["PropertyGroupId"] == SECRETS_GROUP)
    assert all(value.startswith("arn:") for value in secrets.values())

    runtime = flink_runtime_dir(tmp_path / "flink-runtime")
    probe = textwrap.dedent(f"""
        import sys
        sys.path[:0] = [{str(unpacked)!r}, {str(runtime)!r}]
        import main
        from tickflow.config import load_settings
        groups = main.read_property_groups(main.LOCAL_PROPERTIES.with_name("absent"),
                                           main.LOCAL_PROPERTIES)
        settings = load_settings(environ=main.settings_environ(groups))
        assert settings.root == main.HERE / "app", settings.root
        assert settings.flink.job_jars == ""
        allowed = ({str(unpacked)!r}, {str(runtime)!r}, sys.base_prefix)
        outside = sorted(
            name for name, module in list(sys.modules.items())
            if getattr(module, "__file__", None) and not module.__file__.startswith(allowed)
        )
        assert not outside, outside
        print("dep:", sorted({{m.__file__.split("/dep/")[1].split("/")[0]
                               for m in list(sys.modules.values())
                               if "/dep/" in (getattr(m, "__file__", None) or "")}}))
    """)
    # -I -S: no site-packages, no user site, no PYTHONPATH: only the zip and the runtime
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", probe],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    for vendored in ("orjson", "redis", "yaml"):
        assert vendored in done.stdout, done.stdout


def runtime_pythons() -> list[str]:
    """This interpreter and, when installed, a CPython 3.12 (the runtime's)."""
    found = [sys.executable]
    pyenv = sorted(Path.home().glob(".pyenv/versions/3.12*/bin/python3.12"))
    candidates = [shutil.which("python3.12"), *map(str, pyenv)]
    for candidate in filter(None, candidates):
        done = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2])"],
                              capture_output=True, text=True, check=False, timeout=60)  # fmt: skip
        if done.returncode == 0 and done.stdout.strip() == "(3, 12)":
            return [*found, candidate]
    return found


@pytest.mark.slow
def test_aws_zip_carries_the_compiled_core_and_one_jar(aws_zip: AwsZip, tmp_path: Path) -> None:
    unpacked, names = aws_zip.unpacked, aws_zip.names
    # the Rust and Java sources stay out: they are built into dep/ and lib/
    sources = (".rs", ".java", "Cargo.toml", "Cargo.lock", "pom.xml")
    compiled = ("app/jobs/native/", "app/jobs/jvm/")
    assert not [n for n in names if n.endswith(sources) or n.startswith(compiled)]

    # the core's wheel: cp311-abi3 (so 3.12 takes it), manylinux2014 x86_64, glibc <= 2.17
    (wheel_file,) = unpacked.glob("dep/tickflow_native-*.dist-info/WHEEL")
    tags = [line.split(":", 1)[1].strip() for line in wheel_file.read_text().splitlines()
            if line.startswith("Tag:")]  # fmt: skip
    assert tags, wheel_file.read_text()
    for tag in tags:
        interpreter, abi, platform = tag.split("-")
        assert (interpreter, abi) == ("cp311", "abi3"), tag
        assert platform in ("manylinux2014_x86_64", "manylinux_2_17_x86_64"), tag
    runtime_tags = {str(t) for t in packaging_tags.cpython_tags(
        (3, 12), platforms=["manylinux_2_17_x86_64", "manylinux2014_x86_64"])}  # fmt: skip
    assert set(tags) <= runtime_tags
    (library,) = unpacked.glob("dep/tickflow_native/*.abi3.so")
    glibc = {tuple(map(int, m)) for m in re.findall(rb"GLIBC_(\d+)\.(\d+)", library.read_bytes())}
    assert glibc and max(glibc) <= (2, 17), sorted(glibc)

    # imported from dep/ alone by an isolated interpreter (no site-packages, no PYTHONPATH),
    # and the core runs: a bad frame becomes a dead letter in its sink blob
    dep, app = unpacked / package.DEP_DIR, unpacked / package.APP_DIR
    probe = textwrap.dedent(f"""
        import sys
        sys.path[:0] = [{str(dep)!r}, {str(app)!r}]
        import tickflow_native
        from schemas.bundles import frame_bundle, sink_blob_sections
        assert tickflow_native.__file__.startswith({str(dep)!r}), tickflow_native.__file__
        core = tickflow_native.NativeStream(
            top_n=5, snapshot_interval_ms=1000, max_levels=100, max_buffered=100,
            nbbo_stale_after_ms=5000, bar_intervals_ms=[60000], depth_band_bps="10",
            trade_dedup_ms=1000, quote_equivalents=[("USDT", "USD")], stale_after_ms=10000,
            resync_retry_ms=1000, redis_prefix="t",
        )
        assert not core.process_bundle("BTC-USD", frame_bundle([(b"\\xff\\x01bad", 1)]), 0, 1)
        sections = [(k, n, c) for k, n, c, _ in sink_blob_sections(core.take_blob())]
        assert sections == [(2, "deadletter", 1)], sections
        print("%d.%d" % sys.version_info[:2])
    """)
    versions: list[str] = []
    for python in runtime_pythons():
        done = subprocess.run([python, "-I", "-S", "-c", probe], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
        assert done.returncode == 0, f"{python}: {done.stderr[-3000:]}"
        versions.append(done.stdout.strip())
    assert versions[0] == f"{sys.version_info.major}.{sys.version_info.minor}", versions
    print("the core imported from the zip by", versions)

    # lib/: the one jar that jarfile names, with the connector and every operator jobs use
    assert [n for n in names if n.startswith(f"{package.LIB_DIR}/")] == [aws_zip.options["jarfile"]]
    with zipfile.ZipFile(unpacked / aws_zip.options["jarfile"]) as jar:
        entries = set(jar.namelist())
        factories = jar.read("META-INF/services/org.apache.flink.table.factories.Factory")
    assert "org/apache/flink/connector/kafka/source/KafkaSource.class" in entries
    assert b"KafkaDynamicTableFactory" in factories
    jvm_ops = (ROOT / "jobs" / "jvm_ops.py").read_text()
    classes = set(re.findall(r"(?:\b_ops\(\)|\bops)\.([A-Z]\w+)", jvm_ops))
    assert {"FrameBundler", "BundleKey", "TopicRecords", "ClickHouseRowBinarySink"} <= classes
    for name in classes:
        assert f"io/tickflow/flink/{name}.class" in entries, name
