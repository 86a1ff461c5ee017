"""Which rollout servers one URL names (opensir.engines.replicas): every address of a headless Service."""

from __future__ import annotations

import socket

import pytest

from opensir.engines.replicas import resolve_endpoints, server_root


def test_a_root_loses_its_v1_and_trailing_slash() -> None:
    assert server_root("http://h:8000/v1/") == "http://h:8000"
    assert server_root("http://h:8000") == "http://h:8000"


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000/v1", "http://localhost:8000", "http://[::1]:8000"])
def test_ip_literals_and_localhost_are_one_server(url: str) -> None:
    assert resolve_endpoints(url) == [server_root(url)]


def test_a_headless_service_resolves_to_each_replica(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = [
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.1.0.7", 8000)),
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.1.0.3", 8000)),
        (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("fd00::3", 8000, 0, 0)),
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.1.0.3", 8000)),
    ]
    asked = []

    def getaddrinfo(host, port, *args, **kwargs):
        asked.append((host, port))
        return answers

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    # Sorted, deduplicated, and IPv4 only: a dual-stack pod is one replica, not two.
    assert resolve_endpoints("http://r-rollout.team.svc:8000/v1") == [
        "http://10.1.0.3:8000",
        "http://10.1.0.7:8000",
    ]
    assert asked == [("r-rollout.team.svc", 8000)]


def test_an_ipv6_only_name_gives_bracketed_addresses(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("fd00::3", 80, 0, 0))]
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: answers)
    assert resolve_endpoints("http://r-rollout") == ["http://[fd00::3]:80"]


def test_a_name_without_ready_pods_resolves_to_none() -> None:
    assert resolve_endpoints("http://no-such-host.invalid:8000") == []
