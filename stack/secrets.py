"""The local stack's credentials, generated once into ``<state_dir>/secrets`` (0700, files
0600): a CA with the Kafka broker's and the client's certificates (PEM for librdkafka, PKCS12
for JVM clients and the broker), the SCRAM passwords of Kafka's ``tickflow`` user and of the
broker itself, the Redis and ClickHouse passwords and the dashboard's write token.

Nothing here prints a secret: errors name files and commands, never values. A file that exists
is kept (a stack keeps its credentials across ``down`` / ``up``); a missing one is made again
(certificates: all of them, from a new CA).
"""

from __future__ import annotations

import ipaddress
import os
import secrets as random_secrets
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from stack.system import StackError
from tickflow.config import Settings, with_secret_files

SECRETS_DIR = "secrets"
CA_DAYS = 3650
CERT_DAYS = 825
BROKER_USER = "broker"  # the broker's own SCRAM identity (inter-broker listener)
BROKER_CN = "tickflow-broker"

# password files: name -> what it protects
PASSWORD_FILES = {
    "kafka.password": "Kafka SCRAM user (kafka.sasl_username)",
    "kafka-broker.password": "Kafka SCRAM user of the broker itself",
    "stores.password": "PKCS12 key and trust stores",
    "redis.password": "Redis default user",
    "clickhouse.password": "ClickHouse user (clickhouse.user)",
    "dashboard.token": "dashboard write endpoints (bearer token)",
    "registry.password": "schema registry user (registry.username)",
}
CERT_FILES = (
    "ca.pem", "ca.key", "broker.pem", "broker.key", "broker.p12",
    "client.pem", "client.key", "client.p12", "truststore.p12",
)  # fmt: skip


def secrets_dir(settings: Settings) -> Path:
    return settings.state_dir / SECRETS_DIR


def new_password() -> str:
    """32 random URL-safe characters (no quotes or backslashes: safe in JAAS and XML)."""
    return random_secrets.token_urlsafe(24)


def _private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to a file created 0600 (never readable by others, even for a moment)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    tmp.replace(path)


def _run(argv: list[str], cwd: Path) -> None:
    old = os.umask(0o077)
    try:
        done = subprocess.run(
            argv, cwd=cwd, capture_output=True, text=True, check=False, timeout=120
        )
    finally:
        os.umask(old)
    if done.returncode != 0:
        # the arguments name files only (passwords go through files): fine to show
        raise StackError(f"secrets: {' '.join(argv[:3])} failed:\n{done.stderr[-2000:]}")


def _san(hosts: list[str]) -> str:
    names = []
    for host in dict.fromkeys(hosts):
        try:
            ipaddress.ip_address(host)
            names.append(f"IP:{host}")
        except ValueError:
            names.append(f"DNS:{host}")
    return ",".join(names)


def _issue(directory: Path, name: str, cn: str, usage: str, san: str | None) -> None:
    """``name``.key / ``name``.pem signed by the CA, and ``name``.p12 (key, cert, CA)."""
    ext = [
        "basicConstraints=critical,CA:FALSE",
        "keyUsage=critical,digitalSignature,keyEncipherment",
        f"extendedKeyUsage={usage}",
    ]
    if san:
        ext.append(f"subjectAltName={san}")
    (directory / f"{name}.ext").write_text("\n".join(ext) + "\n")
    _run(["openssl", "req", "-new", "-newkey", "rsa:2048", "-nodes",
          "-keyout", f"{name}.key", "-subj", f"/CN={cn}/O=tickflow", "-out", f"{name}.csr"],
         directory)  # fmt: skip
    _run(["openssl", "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
          "-CAcreateserial", "-days", str(CERT_DAYS), "-sha256", "-extfile", f"{name}.ext",
          "-out", f"{name}.pem"], directory)  # fmt: skip
    _run(["openssl", "pkcs12", "-export", "-in", f"{name}.pem", "-inkey", f"{name}.key",
          "-certfile", "ca.pem", "-name", name, "-out", f"{name}.p12",
          "-passout", "file:stores.password"], directory)  # fmt: skip
    for leftover in (f"{name}.csr", f"{name}.ext"):
        (directory / leftover).unlink(missing_ok=True)


def broker_hosts(settings: Settings) -> list[str]:
    """Every address the Kafka nodes' certificate must name: nodes on hosts of their own reach
    each other there, the controllers' included."""
    hosts = [host for host, _ in settings.kafka.addresses()]
    return [*hosts, *settings.kafka.controller_addresses(), "127.0.0.1", "localhost"]


def certified_hosts(directory: Path) -> set[str]:
    """The addresses and names the Kafka nodes' certificate in ``directory`` names (none if it
    cannot be read): a layout that moved a node to an address it does not name needs a new one,
    or TLS to that node fails its hostname check."""
    done = subprocess.run(
        ["openssl", "x509", "-in", str(directory / "broker.pem"), "-noout", "-ext",
         "subjectAltName"], capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        return set()
    names = done.stdout.split(":", 1)[1] if "Alternative Name" in done.stdout else ""
    return {n.strip().split(":", 1)[1] for n in names.split(",") if ":" in n}


def _make_certificates(settings: Settings, directory: Path) -> None:
    if not shutil.which("openssl") or not shutil.which("keytool"):
        raise StackError("secrets: openssl and keytool (Java) are needed to make certificates")
    for name in (*CERT_FILES, "ca.srl"):
        (directory / name).unlink(missing_ok=True)
    _run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key",
          "-out", "ca.pem", "-days", str(CA_DAYS), "-sha256", "-subj",
          "/CN=tickflow local CA/O=tickflow",
          "-addext", "basicConstraints=critical,CA:TRUE",
          "-addext", "keyUsage=critical,keyCertSign,cRLSign"], directory)  # fmt: skip
    _issue(directory, "broker", BROKER_CN, "serverAuth,clientAuth", _san(broker_hosts(settings)))
    _issue(directory, "client", settings.kafka.sasl_username or "tickflow", "clientAuth", None)
    _run(["keytool", "-importcert", "-noprompt", "-alias", "tickflow-ca", "-file", "ca.pem",
          "-storetype", "PKCS12", "-keystore", "truststore.p12",
          "-storepass:file", "stores.password"], directory)  # fmt: skip
    (directory / "ca.srl").unlink(missing_ok=True)


def ensure_secrets(settings: Settings, log: Callable[[str], None] | None = None) -> Settings:
    """Generate whatever is missing under ``<state_dir>/secrets``; return ``settings`` with the
    secrets read from their files (those set in the configuration win)."""
    directory = secrets_dir(settings)
    _private_dir(directory)
    made: list[str] = []
    for name in PASSWORD_FILES:
        path = directory / name
        if not path.exists():
            write_private(path, new_password() + "\n")
            made.append(name)
    if (
        "stores.password" in made
        or not all((directory / n).exists() for n in CERT_FILES)
        or not set(broker_hosts(settings)) <= certified_hosts(directory)
    ):
        _make_certificates(settings, directory)
        made.append("certificates")
    for path in directory.iterdir():
        path.chmod(0o600)
    if made and log is not None:
        log(f"secrets: generated {', '.join(made)} in {directory} (0600)")
    return with_secret_files(settings)


def secret_paths(settings: Settings) -> list[Path]:
    """Every file the stack keeps secrets in (for checks and docs)."""
    directory = secrets_dir(settings)
    return [directory / name for name in (*PASSWORD_FILES, *CERT_FILES)]
