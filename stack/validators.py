"""Validators of the deployable artifacts that run without Docker or AWS, installed by the
project itself (a fresh CI machine has none of them):

- ``docker compose config`` (parses, interpolates and checks docker/compose.yaml): Docker
  Compose v2 built from its Go module into ``<cache_dir>/tools/``; without a Go >= 1.21 on
  PATH, the Go toolchain itself comes from the Go module proxy first;
- ``hadolint`` (docker/*.Dockerfile) and ``cfn-lint`` (aws/cloudformation.yaml): Python
  packages of the ``test`` extra, so they sit next to this interpreter.

``python -m stack.validators`` installs them and prints where they are.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path

from stack.system import StackError
from tickflow.config import Settings, load_settings

COMPOSE_MODULE = "github.com/docker/compose/v2"
COMPOSE_VERSION = "v2.40.3"  # the last release of the v2 module path; needs Go >= 1.24
# downloaded when no usable Go is installed; newer toolchains are fetched by it as needed
GO_TOOLCHAIN = "v0.0.1-go1.24.9.linux-amd64"
GO_PROXY = "https://proxy.golang.org"
BUILD_TIMEOUT_S = 1800


def tools_dir(settings: Settings) -> Path:
    return settings.cache_dir / "tools"


def compose_path(settings: Settings) -> Path:
    return tools_dir(settings) / f"docker-compose-{COMPOSE_VERSION}"


def venv_tool(name: str) -> Path:
    """A console script installed next to this interpreter (hadolint, cfn-lint)."""
    path = Path(sys.executable).parent / name
    if path.exists():
        return path
    found = shutil.which(name)
    if found is None:
        raise StackError(f"{name} is not installed: pip install -e '.[test]'")
    return Path(found)


def _go_version(go: str) -> tuple[int, int] | None:
    try:
        out = subprocess.run([go, "version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    match = re.search(r"go(\d+)\.(\d+)", out)
    return (int(match.group(1)), int(match.group(2))) if match else None


def go_binary(settings: Settings) -> str:
    """A Go that can build Compose: the installed one if >= 1.21 (it fetches the toolchain
    Compose asks for), else a toolchain module from the Go proxy into the cache."""
    installed = shutil.which("go")
    if installed and (_go_version(installed) or (0, 0)) >= (1, 21):
        return installed
    root = tools_dir(settings) / "go-toolchain"
    go = next(root.glob("**/bin/go"), None)
    if go is None:
        url = f"{GO_PROXY}/golang.org/toolchain/@v/{GO_TOOLCHAIN}.zip"
        with urllib.request.urlopen(url, timeout=600) as response:
            archive = zipfile.ZipFile(io.BytesIO(response.read()))
        archive.extractall(root)
        # zip archives keep no modes: the commands of bin/ and pkg/tool/ must be executable
        for path in [*root.glob("**/bin/*"), *root.glob("**/pkg/tool/*/*")]:
            path.chmod(0o755)
        go = next(root.glob("**/bin/go"))
    return str(go)


def ensure_compose(settings: Settings) -> Path:
    """docker-compose of COMPOSE_VERSION, built once into the cache (a few minutes)."""
    target = compose_path(settings)
    if target.exists():
        return target
    go = go_binary(settings)
    cache = settings.cache_dir / "go"
    env = {
        **os.environ,
        "GOPATH": str(cache / "path"),
        "GOMODCACHE": str(cache / "mod"),
        "GOCACHE": str(cache / "build"),
        "GOFLAGS": "-modcacherw",
        "GOTOOLCHAIN": "auto",
        "CGO_ENABLED": "0",
    }
    with tempfile.TemporaryDirectory(prefix="compose-") as tmp:
        # built as the main module: its go.mod (exclude/replace directives) applies in full,
        # which `go install module@version` refuses
        download = subprocess.run(
            [go, "mod", "download", "-json", f"{COMPOSE_MODULE}@{COMPOSE_VERSION}"],
            cwd=tmp, env=env, capture_output=True, text=True, check=False, timeout=600,
        )  # fmt: skip
        match = re.search(r'"Dir":\s*"([^"]+)"', download.stdout)
        if download.returncode != 0 or match is None:
            raise StackError(f"go mod download {COMPOSE_MODULE} failed:\n{download.stderr[-3000:]}")
        source = Path(tmp) / "compose"
        shutil.copytree(match.group(1), source)
        for path in source.rglob("*"):
            path.chmod(path.stat().st_mode | 0o200)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.with_suffix(".partial")
        ldflags = f"-s -w -X {COMPOSE_MODULE}/internal.Version={COMPOSE_VERSION}"
        build = subprocess.run(
            [go, "build", "-trimpath", "-ldflags", ldflags, "-o", str(staging), "./cmd"],
            cwd=source, env=env, capture_output=True, text=True, check=False,
            timeout=BUILD_TIMEOUT_S,
        )  # fmt: skip
        if build.returncode != 0:
            raise StackError(f"building docker compose failed:\n{build.stderr[-3000:]}")
        staging.rename(target)
    return target


def compose_config(
    settings: Settings,
    compose_file: Path,
    variables: dict[str, str] | None = None,
    overrides: tuple[Path, ...] = (),
) -> str:
    """``docker compose -f FILE [-f OVERRIDE ...] config`` with ``variables`` (e.g. the
    required passwords) as the only TICKFLOW* variables: the resolved model, or StackError
    with the reason."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TICKFLOW", "COMPOSE_"))}
    env.update(variables or {})
    files = [arg for path in (compose_file, *overrides) for arg in ("-f", str(path))]
    done = subprocess.run(
        [str(ensure_compose(settings)), *files, "config"],
        capture_output=True, text=True, check=False, env=env, timeout=120,
    )  # fmt: skip
    if done.returncode != 0:
        raise StackError(f"docker compose config {compose_file}:\n{done.stderr.strip()}")
    return done.stdout


def run_linter(argv: list[str]) -> str:
    """Run a linter; its output, or StackError with it when it finds anything."""
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=600)
    output = (done.stdout + done.stderr).strip()
    if done.returncode != 0:
        raise StackError(f"`{' '.join(argv)}` failed:\n{output}")
    return output


def main() -> int:
    settings = load_settings()
    print(f"docker compose: {ensure_compose(settings)}")
    for name in ("hadolint", "cfn-lint"):
        print(f"{name}: {venv_tool(name)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
