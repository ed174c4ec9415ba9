"""Processes that can be cut off the network where they run, without an address of their own.

A process that must keep its address (a Flink JobManager: every client, probe and script of
the stack finds it on loopback) cannot move into a namespace of its own (``stack.netns``).
Instead it starts in a cgroup (v2) of its own, ``tickflow/<name>``, and ``cut`` adds an
nftables table that drops every packet its sockets send or receive: connections to and from
it hang with no reset, as when its host's link fails. ``heal`` deletes the table. A cgroup only
marks the sockets created in it, so the process must start there (``join`` in the child before
it execs); its children inherit it.

Needs root and ``nft`` (Debian ``nftables``); the local stack uses it only when configured
(``flink.partitionable_jobmanagers``).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from stack.system import StackError, destroy_sockets

PARENT = "tickflow"
# where nftables resolves a ``socket cgroupv2`` path (the unified hierarchy's usual mount)
NFT_CGROUP_ROOT = Path("/sys/fs/cgroup")
NFT = "nft"
NFT_PACKAGES = {NFT: ["nftables"]}


def cgroup2_mount(mounts: str | None = None) -> Path:
    """Where the cgroup v2 hierarchy is mounted (``/sys/fs/cgroup``, or on a hybrid host e.g.
    ``/sys/fs/cgroup/unified``)."""
    text = Path("/proc/mounts").read_text() if mounts is None else mounts
    for line in text.splitlines():
        fields = line.split()
        if len(fields) > 2 and fields[2] == "cgroup2":
            return Path(fields[1])
    raise StackError("no cgroup v2 hierarchy is mounted: a process cannot be cut off")


def cgroup_path(name: str) -> str:
    """The cgroup of ``name``, relative to the hierarchy's root."""
    return f"{PARENT}/{name}"


def cgroup_dir(name: str) -> Path:
    return cgroup2_mount() / cgroup_path(name)


def table(name: str) -> str:
    return f"tf_cut_{name.replace('-', '_')}"


def ruleset(name: str) -> str:
    """The nftables table that cuts ``name`` off: both directions, for its sockets only."""
    match = f'socket cgroupv2 level 2 "{cgroup_path(name)}" drop'
    return (
        f"table inet {table(name)} {{\n"
        f"  chain in {{ type filter hook input priority 0; policy accept; {match}; }}\n"
        f"  chain out {{ type filter hook output priority 0; policy accept; {match}; }}\n"
        "}\n"
    )


def _nft(*args: str, stdin: str | None = None, check: bool = True) -> str:
    done = subprocess.run([NFT, *args], input=stdin, capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise StackError(f"`nft {' '.join(args)}` failed: {done.stderr.strip()}")
    return done.stdout


def ensure(name: str) -> Path:
    """The cgroup of ``name`` (idempotent), visible where nftables looks for it."""
    if os.geteuid() != 0:
        raise StackError(f"{name}: cutting a process off the network needs root")
    directory = cgroup_dir(name)
    directory.mkdir(parents=True, exist_ok=True)
    mount = cgroup2_mount()
    if mount != NFT_CGROUP_ROOT:
        # a hybrid host: nftables resolves paths under /sys/fs/cgroup (a tmpfs there)
        link = NFT_CGROUP_ROOT / PARENT
        if not link.exists():
            link.symlink_to(mount / PARENT)
    return directory


def join(name: str) -> None:
    """Move the calling process into the cgroup of ``name`` (a child, before it execs)."""
    (cgroup_dir(name) / "cgroup.procs").write_text(f"{os.getpid()}\n")


def cut(name: str) -> None:
    """Drop every packet the sockets of ``name``'s processes send or receive, until ``heal``."""
    if not cut_off(name):
        _nft("-f", "-", stdin=ruleset(name))


def heal(name: str) -> None:
    if cut_off(name):
        _nft("delete", "table", "inet", table(name))


def reset_connections(name: str) -> None:
    """Destroy every TCP socket of ``name``'s cgroup, those its killed processes left behind
    included: a process killed while cut off leaves its unsent data in sockets that would
    deliver it once healed (``ss -K``: the kernel's sock_destroy, filtered by cgroup)."""
    destroy_sockets("-a", "cgroup", f"/{cgroup_path(name)}")


def cut_off(name: str) -> bool:
    listed = _nft("list", "tables", check=False).splitlines()
    return f"table inet {table(name)}" in (line.strip() for line in listed)


def remove(name: str) -> None:
    """Healed, and the cgroup gone once no process is left in it."""
    heal(name)
    directory = cgroup_dir(name)
    if directory.exists() and not (directory / "cgroup.procs").read_text().strip():
        directory.rmdir()
