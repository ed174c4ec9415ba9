"""``python -m aws.package``: the application zip for AWS Managed Service for Apache Flink.

Layout (what the ``kinesis.analytics.flink.run.options`` property group points at)::

    main.py                       python: the entry script (aws/main.py)
    application_properties.json   runtime properties for runs outside the service
    lib/tickflow-flink-ops-1-aws.jar
                                  jarfile: the Kafka connector and the JVM operators (jobs/jvm)
    app/                          pyFiles: jobs (Python only), schemas, tickflow, aws.runtime,
                                  config/
    dep/                          pyFiles: the job's dependencies, wheels for the runtime's
                                  Python and platform (pip --target --only-binary), with the
                                  compiled core (tickflow_native, jobs/native)

One jar: the service adds the single jar that ``jarfile`` names to the job (the run options
take no list, and the job does not ship jars itself there: flink.job_jars is empty),
so jobs/jvm's ``aws`` profile shades the Kafka SQL connector (already an uber jar) and the
operators into one (stack/jars.py: tickflow_aws_jar; META-INF/services merged, so the
connector's factories stay registered).

The compiled core goes in as a wheel, installed into dep/ by the same pip --target as the
other dependencies, so pip checks its tags against the runtime's: it is cp311-abi3 (CPython
3.11 and later, so the runtime's 3.12) and manylinux2014 x86_64, linked against glibc 2.17
whatever this machine's glibc (stack/wheels.py). The Rust and Java sources are not packed.

PyFlink itself is the runtime's (never packed). Secrets are not in the zip: the properties
name Secrets Manager ARNs (aws/runtime.py).
"""

from __future__ import annotations

import argparse
import configparser
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from stack.flink import JOB_CODE_PACKAGES
from stack.jars import tickflow_aws_jar
from stack.system import StackError
from stack.wheels import native_wheel
from tickflow.config import Settings, load_settings

# AWS Managed Service for Apache Flink 2.2 runs PyFlink jobs on Python 3.12, x86_64 Linux
RUNTIME_PYTHON = "3.12"
RUNTIME_PLATFORM = "manylinux2014_x86_64"
RUN_OPTIONS_GROUP = "kinesis.analytics.flink.run.options"
ENTRY = "main.py"
APP_DIR = "app"
DEP_DIR = "dep"
LIB_DIR = "lib"
PROPERTIES = "application_properties.json"
# of setup.cfg's install_requires, not packed: PyFlink is the runtime's (pyarrow comes with
# it), the rest only the connectors, the local stack and `tickflow export` use (the import
# check of the zip proves the job needs none)
NOT_PACKED = (
    "apache-flink", "confluent-kafka", "kafka-python", "websockets", "prometheus-client",
    "msgspec", "pyarrow",
)  # fmt: skip
# what the entry adds: Secrets Manager (the runtime's boto3, if any, is not relied upon)
EXTRA_REQUIREMENTS = ("boto3>=1.34,<2",)
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc")
# not Python: built into dep/ (the core's wheel) and lib/ (the jar)
COMPILED_SOURCES = ("jobs/native", "jobs/jvm")


def requirements(root: Path) -> list[str]:
    """setup.cfg's install_requires (its one list) that the job imports, plus the entry's."""
    parser = configparser.ConfigParser()
    parser.read(root / "setup.cfg")
    lines = parser["options"]["install_requires"].splitlines()
    wanted = [
        line.strip()
        for line in lines
        if line.strip()
        and not line.strip().startswith("#")
        and not line.strip().lower().startswith(NOT_PACKED)
    ]
    return [*wanted, *EXTRA_REQUIREMENTS]


def run_options(jar_name: str) -> dict[str, str]:
    return {
        "python": ENTRY,
        "jarfile": f"{LIB_DIR}/{jar_name}",
        "pyFiles": f"{APP_DIR}/,{DEP_DIR}/",
    }


def vendor(
    target: Path, reqs: list[str], python_version: str, platform: str, wheels: list[Path]
) -> None:
    """pip install --target for another interpreter: binary wheels of that Python/platform,
    and the local ``wheels`` (pip refuses one whose tags that interpreter would not accept)."""
    argv = [
        sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
        "--no-compile", "--target", str(target), "--only-binary=:all:",
        "--implementation", "cp", "--python-version", python_version,
        "--platform", platform, *reqs, *map(str, wheels),
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=1800)
    if done.returncode != 0:
        raise StackError(f"vendoring the job's dependencies failed:\n{done.stderr[-3000:]}")


def stage(settings: Settings, staging: Path, python_version: str, platform: str) -> None:
    root = settings.root
    shutil.copy2(root / "aws" / "main.py", staging / ENTRY)
    app = staging / APP_DIR
    compiled = {root / path for path in COMPILED_SOURCES}

    def ignored(directory: str, names: list[str]) -> set[str]:
        here = Path(directory)
        return set(IGNORED(directory, names)) | {n for n in names if here / n in compiled}

    for package in JOB_CODE_PACKAGES:
        shutil.copytree(root / package, app / package, ignore=ignored)
    (app / "aws").mkdir()
    for name in ("__init__.py", "runtime.py"):
        shutil.copy2(root / "aws" / name, app / "aws" / name)
    shutil.copytree(root / "config", app / "config", ignore=IGNORED)
    jar = tickflow_aws_jar(settings)
    (staging / LIB_DIR).mkdir()
    shutil.copy2(jar, staging / LIB_DIR / jar.name)
    wheels = [native_wheel(settings)]
    vendor(staging / DEP_DIR, requirements(root), python_version, platform, wheels)
    local = json.loads((root / "aws" / PROPERTIES).read_text())
    groups = [{"PropertyGroupId": RUN_OPTIONS_GROUP, "PropertyMap": run_options(jar.name)}]
    (staging / PROPERTIES).write_text(json.dumps(groups + local, indent=2) + "\n")


def write_zip(staging: Path, output: Path) -> None:
    """Files in sorted order with fixed times: the same inputs give the same zip."""
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_suffix(".partial")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(p for p in staging.rglob("*") if p.is_file()):
            info = zipfile.ZipInfo(path.relative_to(staging).as_posix(), (1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, path.read_bytes())
    os.replace(partial, output)


def build(
    settings: Settings,
    output: Path,
    python_version: str = RUNTIME_PYTHON,
    platform: str = RUNTIME_PLATFORM,
) -> Path:
    with tempfile.TemporaryDirectory(prefix="tickflow-aws-") as tmp:
        staging = Path(tmp)
        stage(settings, staging, python_version, platform)
        write_zip(staging, output)
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m aws.package", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--output", type=Path, default=Path("dist/tickflow-aws.zip"))
    parser.add_argument("--python-version", default=RUNTIME_PYTHON)
    parser.add_argument("--platform", default=RUNTIME_PLATFORM)
    args = parser.parse_args(argv)
    settings = load_settings()
    output = args.output if args.output.is_absolute() else settings.root / args.output
    build(settings, output, args.python_version, args.platform)
    size_mb = output.stat().st_size / 1e6
    print(f"{output} ({size_mb:.1f} MB): upload to S3 and point the application at it")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
