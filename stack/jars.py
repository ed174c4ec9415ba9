"""Java dependencies resolved from Maven Central with the pinned poms in ``stack/maven/``.

Jars land in ``<cache_dir>/jars/<name>/``; a marker file holding the pom's hash makes repeated
calls free and re-resolves when a pom changes.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path
from xml.etree import ElementTree

from stack.system import StackError, ensure_packages
from tickflow.config import Settings

MAVEN_DIR = Path(__file__).resolve().parent / "maven"
# the project's own JVM operators (jobs/jvm), built from source with Maven
OPS_DIR = Path(__file__).resolve().parent.parent / "jobs" / "jvm"
OPS_POM = OPS_DIR / "pom.xml"
OPS_JAR_GLOB = "tickflow-flink-ops-*.jar"
# classified jars beside the plain one: the tests jar, the `aws` profile's shaded jar
OPS_CLASSIFIED = ("-tests.jar", "-aws.jar")
KAFKA_POM = MAVEN_DIR / "kafka-broker.pom.xml"
FLINK_POM = MAVEN_DIR / "flink-jars.pom.xml"
# Apicurio Registry's own distribution (the schema registry): the app's `all` tar.gz, a Quarkus
# runner jar and its lib/. 3.0.x's parent pom is not on Maven Central, so it cannot be a
# resolved dependency: the dependency plugin's `get` of 2.8 (which reads no descriptor when
# not transitive) fetches the file alone. 3.0.x runs on Java 17; 3.1 and later need Java 21
REGISTRY_ARTIFACT = "io.apicurio:apicurio-registry-app:{version}:tar.gz:all"
DEPENDENCY_GET = "org.apache.maven.plugins:maven-dependency-plugin:2.8:get"
# log4j's JSON layout for the Flink daemons' logs, only when the wheel's lib/ lacks it
LOG4J_JSON_POM = MAVEN_DIR / "log4j-json.pom.xml"
MARKER = ".resolved-from"
# what a fresh CI image needs to run Maven and the JVM services
JAVA_PACKAGES = {"java": ["openjdk-17-jre-headless"], "mvn": ["maven"]}
# building jobs/jvm needs the compiler too
JDK_PACKAGES = {"javac": ["openjdk-17-jdk-headless"], "mvn": ["maven"]}
KAFKA_CONNECTOR_GLOB = "flink-sql-connector-kafka-*.jar"
PROMETHEUS_REPORTER_GLOB = "flink-metrics-prometheus-*.jar"
LOG4J_JSON_GLOB = "log4j-layout-template-json-*.jar"


def pom_digest(pom: Path, transitive: bool) -> str:
    return hashlib.sha256(pom.read_bytes() + f"transitive={transitive}".encode()).hexdigest()


def resolve(pom: Path, out_dir: Path, transitive: bool = True) -> Path:
    """Copy the pom's dependencies into out_dir with Maven unless already done for this pom."""
    digest = pom_digest(pom, transitive)
    marker = out_dir / MARKER
    if marker.exists() and marker.read_text().strip() == digest and any(out_dir.glob("*.jar")):
        return out_dir
    ensure_packages(JAVA_PACKAGES)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # resolve into a sibling temp dir, then swap: an interrupted run never looks complete
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    argv = [
        "mvn", "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
        f"-DoutputDirectory={staging}", f"-DexcludeTransitive={str(not transitive).lower()}",
    ]  # fmt: skip
    try:
        done = subprocess.run(
            argv, cwd=staging, capture_output=True, text=True, check=False, timeout=1800
        )
        if done.returncode != 0:
            raise StackError(
                f"Maven could not resolve {pom.name}: `{' '.join(argv)}` exited "
                f"{done.returncode}\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
            )
        (staging / MARKER).write_text(digest + "\n")
        shutil.rmtree(out_dir, ignore_errors=True)
        staging.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def jars_dir(settings: Settings, name: str) -> Path:
    return settings.cache_dir / "jars" / name


def kafka_jars_dir(settings: Settings) -> Path:
    """Directory holding the Kafka broker and its dependencies (classpath ``<dir>/*``)."""
    return resolve(KAFKA_POM, jars_dir(settings, "kafka"), transitive=True)


def flink_jars_dir(settings: Settings) -> Path:
    """Directory holding the extra Flink jars (Kafka SQL connector, Prometheus reporter)."""
    return resolve(FLINK_POM, jars_dir(settings, "flink"), transitive=False)


def flink_connector_jars(settings: Settings) -> list[Path]:
    """Jars a PyFlink job adds with ``env.add_jars(*(p.as_uri() for p in ...))``: the Kafka
    connector and the project's JVM operators (``tickflow_ops_jar``).

    The session cluster has them on its classpath already; jobs still add them so the same
    code runs on a local MiniCluster (duplicates are harmless: org.apache.flink classes load
    parent-first, and the job's copy of the operators is the same build as the cluster's).
    """
    return [*kafka_connector_jars(settings), tickflow_ops_jar(settings)]


def kafka_connector_jars(settings: Settings) -> list[Path]:
    """The shaded Kafka SQL connector (one jar)."""
    jars = sorted(flink_jars_dir(settings).glob(KAFKA_CONNECTOR_GLOB))
    if not jars:
        raise StackError(f"no {KAFKA_CONNECTOR_GLOB} in {jars_dir(settings, 'flink')}")
    return jars


def ops_sources_digest(module: Path = OPS_DIR) -> str:
    """Hash of the module's pom and main sources (tests do not change the jar)."""
    digest = hashlib.sha256()
    files = [module / "pom.xml", *sorted((module / "src" / "main").rglob("*"))]
    for path in files:
        if path.is_file():
            digest.update(path.relative_to(module).as_posix().encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def tickflow_ops_jar(settings: Settings, module: Path = OPS_DIR, run_tests: bool = False) -> Path:
    """The jar of the project's JVM operators (``jobs/jvm``), built with Maven into
    ``<cache_dir>/jars/ops/`` when its sources changed since the last build (a marker holds
    their hash). Maven's build directory is a temporary one: the source tree stays clean."""
    return build_ops(settings, "ops", module, run_tests=run_tests)


def kafka_connector_version(pom: Path = FLINK_POM) -> str:
    """The Kafka SQL connector's version that the local stack's pom pins."""
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    for dependency in ElementTree.parse(pom).getroot().iterfind("m:dependencies/m:dependency", ns):
        if dependency.findtext("m:artifactId", namespaces=ns) == "flink-sql-connector-kafka":
            version = dependency.findtext("m:version", namespaces=ns)
            if version:
                return version.strip()
    raise StackError(f"{pom.name} pins no flink-sql-connector-kafka")


def tickflow_aws_jar(settings: Settings, module: Path = OPS_DIR) -> Path:
    """One jar holding the Kafka SQL connector and the project's JVM operators (the pom's
    ``aws`` profile, maven-shade), into ``<cache_dir>/jars/ops-aws/``: AWS Managed Service for
    Apache Flink adds the single jar its run options name (``jarfile``) to the job."""
    version = kafka_connector_version()
    return build_ops(
        settings, "ops-aws", module, profile="aws", classifier="aws",
        extra=[f"-Dkafka.connector.version={version}"],
    )  # fmt: skip


def build_ops(
    settings: Settings,
    name: str,
    module: Path = OPS_DIR,
    run_tests: bool = False,
    profile: str | None = None,
    classifier: str | None = None,
    extra: list[str] | None = None,
) -> Path:
    """``mvn package`` of ``module`` (with ``profile``) into ``<cache_dir>/jars/<name>/``,
    keeping the one jar of ``classifier`` (the plain jar when None); skipped when the marker
    holds the same sources' hash and arguments."""
    out_dir = jars_dir(settings, name)
    extra = [*(extra or []), *([f"-P{profile}"] if profile else [])]
    digest = ops_sources_digest(module) + f" tests={run_tests} " + " ".join(extra)
    marker = out_dir / MARKER
    built = sorted(out_dir.glob(OPS_JAR_GLOB))
    if marker.exists() and marker.read_text().strip() == digest.strip() and len(built) == 1:
        return built[0]
    ensure_packages(JDK_PACKAGES)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    build_dir = staging / "target"
    argv = [
        "mvn", "-q", "-B", "-f", str(module / "pom.xml"), "package", *extra,
        f"-Dops.build.dir={build_dir}", f"-DskipTests={str(not run_tests).lower()}",
    ]  # fmt: skip
    suffix = f"-{classifier}.jar" if classifier else None
    try:
        done = subprocess.run(
            argv, cwd=staging, capture_output=True, text=True, check=False, timeout=1800
        )
        jars = [
            j
            for j in build_dir.glob(OPS_JAR_GLOB)
            if (j.name.endswith(suffix) if suffix else not j.name.endswith(OPS_CLASSIFIED))
        ]
        if done.returncode != 0 or len(jars) != 1:
            raise StackError(
                f"Maven could not build {module.name}: `{' '.join(argv)}` exited "
                f"{done.returncode}, jars {[j.name for j in jars]}\n"
                f"{done.stdout[-3000:]}{done.stderr[-3000:]}"
            )
        result = staging / "out"
        result.mkdir()
        shutil.copy2(jars[0], result / jars[0].name)
        (result / MARKER).write_text(digest.strip() + "\n")
        shutil.rmtree(out_dir, ignore_errors=True)
        result.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir / jars[0].name


def prometheus_reporter_jars(settings: Settings) -> list[Path]:
    """Flink's Prometheus reporter from Maven (the cluster prefers the copy in the wheel's
    ``plugins/metrics-prometheus/``; this is for a distribution without it)."""
    jars = sorted(flink_jars_dir(settings).glob(PROMETHEUS_REPORTER_GLOB))
    if not jars:
        raise StackError(f"no {PROMETHEUS_REPORTER_GLOB} in {jars_dir(settings, 'flink')}")
    return jars


def log4j_json_layout_jars(settings: Settings) -> list[Path]:
    """log4j-layout-template-json (JsonTemplateLayout) from Maven, the version of the
    log4j-core that Flink 2.2.1 ships; for a Flink lib/ without it."""
    out_dir = resolve(LOG4J_JSON_POM, jars_dir(settings, "log4j-json"), transitive=False)
    jars = sorted(out_dir.glob(LOG4J_JSON_GLOB))
    if not jars:
        raise StackError(f"no {LOG4J_JSON_GLOB} in {out_dir}")
    return jars


def registry_app_dir(settings: Settings) -> Path:
    """Apicurio Registry ``registry.version`` unpacked into ``<cache_dir>/registry/<version>/``
    (its runner jar and lib/) from the distribution on Maven Central; a marker makes repeated
    calls free."""
    version = settings.registry.version
    out_dir = settings.cache_dir / "registry" / version
    artifact = REGISTRY_ARTIFACT.format(version=version)
    if (out_dir / MARKER).exists() and (out_dir / MARKER).read_text().strip() == artifact:
        return out_dir
    ensure_packages(JAVA_PACKAGES)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=out_dir.parent))
    dist = staging / "dist.tar.gz"
    argv = [
        "mvn", "-q", "-B", DEPENDENCY_GET, f"-Dartifact={artifact}", "-Dtransitive=false",
        f"-Ddest={dist}",
    ]  # fmt: skip
    try:
        done = subprocess.run(
            argv, cwd=staging, capture_output=True, text=True, check=False, timeout=1800
        )
        if done.returncode != 0 or not dist.is_file():
            raise StackError(
                f"Maven could not fetch {artifact}: `{' '.join(argv)}` exited "
                f"{done.returncode}\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
            )
        app = staging / "app"
        with tarfile.open(dist) as archive:
            archive.extractall(app, filter="data")
        (app / MARKER).write_text(artifact + "\n")
        shutil.rmtree(out_dir, ignore_errors=True)
        app.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def registry_runner_jar(app_dir: Path) -> Path:
    """The Quarkus application's entry jar: ``*-runner.jar`` (3.0.x, legacy layout) or
    ``quarkus-run.jar`` (3.1+, fast-jar layout)."""
    jars = sorted(app_dir.glob("*-runner.jar")) or sorted(app_dir.glob("quarkus-run.jar"))
    if not jars:
        raise StackError(f"no Apicurio Registry runner jar in {app_dir}")
    return jars[0]
