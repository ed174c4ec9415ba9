"""The compiled core (``jobs/native``) as a wheel for another machine: abi3 (any CPython >= 3.11)
and manylinux2014 x86_64, whatever glibc this machine has.

A wheel linked here against a recent glibc would require that glibc (too-recent versioned
symbols), so maturin links through zig against glibc 2.17 (``--zig``) and checks the result
(its auditwheel pass refuses a wheel that is not manylinux_2_17). maturin and zig come from PyPI
(``ziglang``) into a build venv under ``<cache_dir>/venvs/``; cargo is rustup's. The wheel lands
in ``<cache_dir>/wheels/native/``; a marker holding the hash of the crate's sources and of the
build's pins makes repeated calls free. Cargo's target dir is kept in the cache too, so a change
of the sources recompiles only the crate.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from stack.system import StackError
from tickflow.config import Settings

NATIVE_DIR = Path(__file__).resolve().parent.parent / "jobs" / "native"
# the build's tools (PyPI); ziglang ships the zig binary that links against an old glibc
BUILD_REQUIREMENTS = ("maturin==1.16.0", "ziglang==0.17.1")
# AWS Managed Service for Apache Flink runs x86_64 Linux
TARGET = "x86_64-unknown-linux-gnu"
COMPATIBILITY = "manylinux2014"
MARKER = ".built-from"


def native_sources_digest(crate: Path = NATIVE_DIR) -> str:
    """Hash of what the wheel is built from: the crate's manifest, lock, sources and stub."""
    digest = hashlib.sha256()
    names = ("Cargo.toml", "Cargo.lock", "pyproject.toml", "tickflow_native.pyi")
    files = [crate / name for name in names] + sorted((crate / "src").rglob("*"))
    for path in files:
        if path.is_file():
            digest.update(path.relative_to(crate).as_posix().encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def cargo_path() -> str:
    """PATH with rustup's cargo (not on a non-login shell's PATH) after what is there."""
    cargo_bin = Path.home() / ".cargo" / "bin"
    path = os.environ.get("PATH", "")
    with_rustup = f"{path}{os.pathsep}{cargo_bin}" if cargo_bin.is_dir() else path
    if not shutil.which("cargo", path=with_rustup):
        raise StackError("building the compiled core needs cargo (rustup) on PATH")
    return with_rustup


def build_venv(settings: Settings) -> Path:
    """A venv with maturin and zig (``BUILD_REQUIREMENTS``), made once per set of pins."""
    venv = settings.cache_dir / "venvs" / "native-build"
    marker = venv / MARKER
    pins = "\n".join(BUILD_REQUIREMENTS) + "\n"
    if marker.exists() and marker.read_text() == pins:
        return venv
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    for argv in (
        [sys.executable, "-m", "venv", str(venv)],
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
         "--disable-pip-version-check", *BUILD_REQUIREMENTS],
    ):  # fmt: skip
        done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=900)
        if done.returncode != 0:
            raise StackError(f"`{' '.join(argv)}` failed:\n{done.stderr[-3000:]}")
    marker.write_text(pins)
    return venv


def native_wheel(settings: Settings, crate: Path = NATIVE_DIR) -> Path:
    """The core's ``cp311-abi3-manylinux2014_x86_64`` wheel, built when its sources changed."""
    out_dir = settings.cache_dir / "wheels" / "native"
    digest = " ".join([native_sources_digest(crate), *BUILD_REQUIREMENTS, COMPATIBILITY, TARGET])
    marker = out_dir / MARKER
    built = sorted(out_dir.glob("*.whl"))
    if marker.exists() and marker.read_text().strip() == digest and len(built) == 1:
        return built[0]
    venv = build_venv(settings)
    bin_dir = venv / "bin"
    # maturin finds zig through the venv's python (python -m ziglang): the venv goes first
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{cargo_path()}"}
    env.pop("VIRTUAL_ENV", None)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    argv = [
        str(bin_dir / "maturin"), "build", "--release", "--zig",
        "--compatibility", COMPATIBILITY, "--target", TARGET,
        "--interpreter", str(bin_dir / "python"),
        "--manifest-path", str(crate / "Cargo.toml"),
        "--target-dir", str(settings.cache_dir / "native-target"),
        "--out", str(staging / "wheels"),
    ]  # fmt: skip
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, check=False, timeout=1800, env=env
        )
        wheels = sorted((staging / "wheels").glob("*.whl"))
        if done.returncode != 0 or len(wheels) != 1:
            raise StackError(
                f"building the compiled core's wheel failed: `{' '.join(argv)}` exited "
                f"{done.returncode}, wheels {[w.name for w in wheels]}\n"
                f"{done.stdout[-2000:]}{done.stderr[-3000:]}"
            )
        result = staging / "out"
        result.mkdir()
        shutil.copy2(wheels[0], result / wheels[0].name)
        (result / MARKER).write_text(digest + "\n")
        shutil.rmtree(out_dir, ignore_errors=True)
        result.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir / wheels[0].name
