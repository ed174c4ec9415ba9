"""Hosts of their own on this machine: a network namespace per process, on a bridge.

A process on loopback cannot be cut off from the network while it runs; one in its own
namespace can. Each host is a namespace ``tf-<address>`` whose ``eth0`` (a veth pair) has its
own address, and whose other end (``tfv<address in hex>``) is a port of the bridge ``tf-br0``,
which holds the machine's own address in that subnet. Every process outside reaches the host
at its address, and the hosts reach each other across the bridge. ``partition`` takes the
host's end of the pair down: packets to and from it are dropped, established connections hang
(no reset is sent), as when a switch port or a link fails; ``heal`` brings it back.

Needs root (CAP_NET_ADMIN) and iproute2; the local stack uses it only when configured
(``kafka.node_network``).
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
from dataclasses import dataclass

from stack.system import StackError

BRIDGE = "tf-br0"
IP = "ip"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([IP, *args], capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise StackError(f"`ip {' '.join(args)}` failed: {done.stderr.strip()}")
    return done


def _link_exists(name: str) -> bool:
    return _ip("link", "show", name, check=False).returncode == 0


@dataclass(frozen=True)
class NetHost:
    """A host of its own at ``address``, in the subnet of ``gateway`` (the machine's address on
    the bridge, as an interface: ``10.77.0.1/24``); ``name`` says what runs there. Its
    namespace and link are named after the address, so two stacks (a drill's, a test's) in
    other subnets never share one."""

    name: str
    address: str
    gateway: str

    @property
    def namespace(self) -> str:
        return f"tf-{self.address}"

    @property
    def link(self) -> str:
        """The host's end of its veth pair, as the machine sees it: ``tfv`` and the address in
        hex (an interface name has at most 15 characters)."""
        return f"tfv{int(ipaddress.ip_address(self.address)):08x}"

    def interface(self) -> str:
        network = ipaddress.ip_interface(self.gateway).network
        if ipaddress.ip_address(self.address) not in network:
            raise StackError(f"{self.name}: address {self.address} is not in {network}")
        return f"{self.address}/{network.prefixlen}"

    def argv(self, argv: list[str]) -> list[str]:
        """``argv`` run inside the host's namespace (the same process: ``ip netns exec`` execs)."""
        return [IP, "netns", "exec", self.namespace, *argv]


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise StackError(f"{what}: network namespaces need root (CAP_NET_ADMIN)")


def ensure_bridge(gateway: str) -> None:
    """The bridge with the machine's address ``gateway`` (e.g. ``10.77.0.1/24``), up."""
    if not _link_exists(BRIDGE):
        _ip("link", "add", BRIDGE, "type", "bridge")
    addresses = _ip("-o", "addr", "show", "dev", BRIDGE).stdout
    if f" {gateway} " not in addresses:
        _ip("addr", "add", gateway, "dev", BRIDGE)
    _ip("link", "set", BRIDGE, "up")


def ensure(host: NetHost) -> None:
    """The host's namespace, its veth pair on the bridge, its address; idempotent (a host
    left partitioned is joined again)."""
    require_root(host.name)
    ensure_bridge(host.gateway)
    if host.namespace not in namespaces():
        _ip("netns", "add", host.namespace)
    if not _link_exists(host.link):
        _ip("link", "add", host.link, "type", "veth", "peer", "name", "eth0", "netns",
            host.namespace)  # fmt: skip
    _ip("link", "set", host.link, "master", BRIDGE)
    _ip("link", "set", host.link, "up")
    inside = ["-n", host.namespace]
    addresses = _ip(*inside, "-o", "addr", "show", "dev", "eth0").stdout
    if f" {host.interface()} " not in addresses:
        _ip(*inside, "addr", "add", host.interface(), "dev", "eth0")
    _ip(*inside, "link", "set", "lo", "up")
    _ip(*inside, "link", "set", "eth0", "up")


def remove(host: NetHost) -> None:
    """The host's namespace and veth pair gone (the bridge stays for the others)."""
    if _link_exists(host.link):
        _ip("link", "del", host.link)
    if host.namespace in namespaces():
        _ip("netns", "del", host.namespace)


def remove_bridge_if_unused() -> None:
    if _link_exists(BRIDGE) and not _ip("-o", "link", "show", "master", BRIDGE).stdout.strip():
        _ip("link", "del", BRIDGE)


def namespaces() -> set[str]:
    listed = _ip("netns", "list", check=False).stdout
    return {line.split()[0] for line in listed.splitlines() if line.strip()}


def partition(host: NetHost) -> None:
    """Cut the host off: nothing reaches it, nothing leaves it, until ``heal``."""
    _ip("link", "set", host.link, "down")


def heal(host: NetHost) -> None:
    _ip("link", "set", host.link, "up")


def partitioned(host: NetHost) -> bool:
    shown = _ip("-o", "link", "show", host.link).stdout
    flags = shown.split("<", 1)[1].split(">", 1)[0].split(",") if "<" in shown else []
    return "UP" not in flags
