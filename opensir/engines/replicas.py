"""The rollout servers behind one URL: every replica of the run's vLLM Deployment.

On a cluster, ``rollout.url`` names a headless Service (``R-rollout``), whose DNS name resolves to the
address of every ready rollout pod. Generation spreads its requests over all of them, and a weight
sync must reach each one: a sync sent through a load-balancing virtual IP would pause one replica,
load the weights into another and read the version of a third. :func:`resolve_endpoints` turns the
URL into one base URL per replica; outside a cluster (``127.0.0.1``, ``localhost``, an external
host) it is usually a single one.

A user-given ``rollout.url`` behind a load balancer still works for generation; weight syncs then
reach a single replica, so such a URL must resolve to each replica (a headless Service) when the
servers number more than one.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from urllib.parse import urlsplit

Endpoints = Callable[[], list[str]]
"""Returns the base URLs (``http://address:port``, no ``/v1``) of the replicas that exist right now."""


def server_root(base_url: str) -> str:
    """``base_url`` without a trailing ``/`` or ``/v1``: the root the OpenAI and control routes hang off."""
    root = base_url.rstrip("/")
    return root[: -len("/v1")] if root.endswith("/v1") else root


def resolve_endpoints(base_url: str) -> list[str]:
    """One base URL per address the host of ``base_url`` resolves to, sorted; ``[]`` when it resolves
    to none (a headless Service with no ready pod).

    IPv4 addresses are preferred: a dual-stack name resolves to one IPv4 and one IPv6 address of the
    same server, which must not count as two replicas. An IP literal or ``localhost`` is returned as
    it is.
    """
    root = server_root(base_url)
    parts = urlsplit(root)
    host = parts.hostname
    if host is None:
        raise ValueError(f"rollout URL {base_url!r} names no host")
    if host == "localhost" or _is_ip(host):
        return [root]
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return []
    v4 = sorted({str(info[4][0]) for info in infos if info[0] == socket.AF_INET})
    addresses = v4 or sorted({f"[{info[4][0]}]" for info in infos if info[0] == socket.AF_INET6})
    return [f"{parts.scheme}://{address}:{port}" for address in addresses]


def fixed_endpoints(base_url: str) -> Endpoints:
    """Always the one server at ``base_url``, unresolved (tests, a single external server)."""
    root = server_root(base_url)
    return lambda: [root]


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
