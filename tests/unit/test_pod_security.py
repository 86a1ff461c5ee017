"""Every pod of the platform meets the restricted Pod Security Standard.

https://kubernetes.io/docs/concepts/security/pod-security-standards/ (restricted, which includes baseline).
`restricted_violations(pod_spec)` lists what a pod spec breaks; `assert_restricted(pods)` checks any
iterable of pod specs (or (name, pod spec) pairs): the chart's rendered pods here, and every pod spec the
operator's builders make (plugged in through OPERATOR_POD_SPECS).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest
from test_chart import MATRIX, ROOT, pod_specs, render_case

PodSpec = Mapping[str, Any]

# Where the operator exposes every pod spec its builders can make for a run: "module:function", called
# with the module's make_target(run, uid, image) where it has one, else with the validated SelfPlayRun,
# and returning pod specs, pod templates or workload manifests.
OPERATOR_POD_SPECS = os.environ.get("OPENSIR_OPERATOR_POD_SPECS", "opensir_operator.manifests:all_pod_specs")
RUN_UID = "00000000-0000-4000-8000-000000000000"
RUNTIME_IMAGE = "ghcr.io/opensir/opensir-runtime:0.1.0"

# Volume types the restricted profile allows.
ALLOWED_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected",
    "secret",
}  # fmt: skip
# Sysctls the baseline profile allows.
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}  # fmt: skip
ALLOWED_SELINUX_TYPES = {None, "", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}


def _containers(pod: PodSpec) -> Iterable[tuple[str, Mapping[str, Any]]]:
    for field in ("initContainers", "containers", "ephemeralContainers"):
        for container in pod.get(field) or []:
            yield f"{field}[{container.get('name', '?')}]", container


def restricted_violations(pod: PodSpec) -> list[str]:
    """What the pod spec breaks of the restricted Pod Security Standard (empty: it complies)."""
    problems: list[str] = []
    pod_context: Mapping[str, Any] = pod.get("securityContext") or {}
    for host in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(host):
            problems.append(f"{host} must not be true")
    for volume in pod.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= ALLOWED_VOLUMES:
            problems.append(
                f"volume {volume.get('name')}: type {sorted(kinds - ALLOWED_VOLUMES)} is not allowed"
            )
    for sysctl in pod_context.get("sysctls") or []:
        if sysctl.get("name") not in SAFE_SYSCTLS:
            problems.append(f"sysctl {sysctl.get('name')} is not allowed")
    if pod_context.get("runAsUser") == 0:
        problems.append("securityContext.runAsUser must not be 0")
    pod_seccomp = (pod_context.get("seccompProfile") or {}).get("type")
    if pod_seccomp == "Unconfined":
        problems.append("securityContext.seccompProfile.type must not be Unconfined")
    problems += _selinux_and_apparmor("securityContext", pod_context)

    for where, container in _containers(pod):
        context: Mapping[str, Any] = container.get("securityContext") or {}
        if context.get("privileged"):
            problems.append(f"{where}: privileged must not be true")
        if context.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation must be false")
        capabilities = context.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            problems.append(f"{where}: capabilities.drop must contain ALL")
        added = set(capabilities.get("add") or []) - {"NET_BIND_SERVICE"}
        if added:
            problems.append(f"{where}: capabilities.add {sorted(added)} is not allowed")
        if not context.get("runAsNonRoot", pod_context.get("runAsNonRoot")):
            problems.append(f"{where}: runAsNonRoot must be true (container or pod)")
        if context.get("runAsUser") == 0:
            problems.append(f"{where}: runAsUser must not be 0")
        seccomp = (context.get("seccompProfile") or {}).get("type", pod_seccomp)
        if seccomp not in {"RuntimeDefault", "Localhost"}:
            problems.append(
                f"{where}: seccompProfile.type must be RuntimeDefault or Localhost (got {seccomp})"
            )
        if context.get("procMount", "Default") != "Default":
            problems.append(f"{where}: procMount must be Default")
        for port in container.get("ports") or []:
            if port.get("hostPort"):
                problems.append(f"{where}: hostPort {port['hostPort']} is not allowed")
        problems += _selinux_and_apparmor(where, context)
    return problems


def _selinux_and_apparmor(where: str, context: Mapping[str, Any]) -> list[str]:
    problems = []
    selinux = context.get("seLinuxOptions") or {}
    if selinux.get("type") not in ALLOWED_SELINUX_TYPES or selinux.get("user") or selinux.get("role"):
        problems.append(f"{where}: seLinuxOptions {selinux} is not allowed")
    if (context.get("appArmorProfile") or {}).get("type") == "Unconfined":
        problems.append(f"{where}: appArmorProfile must not be Unconfined")
    return problems


def _as_pod_specs(items: Iterable[Any]) -> Iterable[tuple[str, PodSpec]]:
    """Accept (name, pod spec) pairs, pod specs, pod templates, Pods and workload manifests."""
    for index, item in enumerate(items):
        if isinstance(item, tuple):
            yield item
        elif "kind" in item:
            yield from pod_specs([item])
        elif "template" in item:  # a pod template's parent (e.g. a Job spec)
            yield f"item {index}", item["template"]["spec"]
        elif "spec" in item and "containers" in item["spec"]:  # a pod template
            yield f"item {index}", item["spec"]
        else:
            yield f"item {index}", item


def assert_restricted(pods: Iterable[Any]) -> int:
    """Fail listing every violation of every pod; returns how many pods were checked."""
    checked, problems = 0, []
    for name, pod in _as_pod_specs(pods):
        checked += 1
        assert list(_containers(pod)), f"{name}: no containers"
        problems += [f"{name}: {problem}" for problem in restricted_violations(pod)]
    assert not problems, "restricted Pod Security Standard violated:\n" + "\n".join(problems)
    return checked


# ------------------------------------------------------------------------------------- the checker
GOOD: dict[str, Any] = {
    "securityContext": {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "seccompProfile": {"type": "RuntimeDefault"},
    },
    "containers": [
        {
            "name": "c",
            "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
        }
    ],
    "volumes": [{"name": "tmp", "emptyDir": {}}],
}


def _with(path: str, value: Any) -> dict[str, Any]:
    """A deep copy of GOOD with one field (dotted path; digits index lists) set."""
    import copy

    pod = copy.deepcopy(GOOD)
    *parents, leaf = path.split(".")
    node: Any = pod
    for part in parents:
        node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
    node[leaf] = value
    return pod


def test_good_pod_passes() -> None:
    assert restricted_violations(GOOD) == []
    assert_restricted([GOOD, ("named", GOOD), {"kind": "Pod", "metadata": {"name": "p"}, "spec": GOOD}])


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("hostNetwork", True, "hostNetwork must not be true"),
        ("securityContext.runAsNonRoot", False, "runAsNonRoot must be true"),
        ("securityContext.runAsUser", 0, "runAsUser must not be 0"),
        ("securityContext.seccompProfile", {"type": "Unconfined"}, "must be RuntimeDefault or Localhost"),
        (
            "containers.0.securityContext.allowPrivilegeEscalation",
            True,
            "allowPrivilegeEscalation must be false",
        ),
        ("containers.0.securityContext.capabilities", {"drop": ["NET_RAW"]}, "drop must contain ALL"),
        ("containers.0.securityContext.capabilities", {"drop": ["ALL"], "add": ["SYS_ADMIN"]}, "SYS_ADMIN"),
        ("containers.0.securityContext.privileged", True, "privileged must not be true"),
        ("containers.0.ports", [{"containerPort": 80, "hostPort": 80}], "hostPort 80"),
        ("volumes", [{"name": "h", "hostPath": {"path": "/"}}], "['hostPath'] is not allowed"),
        ("securityContext.sysctls", [{"name": "kernel.msgmax", "value": "1"}], "kernel.msgmax"),
    ],
)
def test_each_violation_is_reported(path: str, value: Any, message: str) -> None:
    problems = restricted_violations(_with(path, value))
    assert any(message in p for p in problems), problems


def test_missing_container_context_is_a_violation() -> None:
    pod = {**GOOD, "initContainers": [{"name": "init"}]}
    problems = restricted_violations(pod)
    assert "initContainers[init]: allowPrivilegeEscalation must be false" in problems
    assert "initContainers[init]: capabilities.drop must contain ALL" in problems


# ------------------------------------------------------------------------------------ the chart's pods
@pytest.mark.parametrize("case", sorted(MATRIX))
def test_every_chart_pod_is_restricted(case: str) -> None:
    pods = list(pod_specs(render_case(case)))
    assert assert_restricted(pods) == len(pods) >= 1


def test_chart_pods_have_read_only_root_filesystems() -> None:
    for name, pod in pod_specs(render_case("all-on")):
        for where, container in _containers(pod):
            assert container["securityContext"]["readOnlyRootFilesystem"] is True, f"{name} {where}"


# -------------------------------------------------------------------------------- the operator's pods
def _operator_pod_builder() -> Callable[[Any], Iterable[Any]]:
    """The builder as a function of a SelfPlayRun."""
    module_name, _, function_name = OPERATOR_POD_SPECS.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name and module_name.startswith(error.name):
            pytest.skip(f"{module_name} does not exist yet (the operator's pod builders)")
        raise
    if not hasattr(module, function_name):
        pytest.skip(f"{OPERATOR_POD_SPECS} does not exist yet (the operator's pod builders)")
    function = getattr(module, function_name)
    make_target = getattr(module, "make_target", None)
    if make_target is None:
        return function
    return lambda run: function(make_target(run, RUN_UID, RUNTIME_IMAGE))


EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.stem for e in EXAMPLES])
def test_every_operator_pod_is_restricted(example: Path) -> None:
    from opensir.spec import load_run

    build = _operator_pod_builder()
    checked = assert_restricted(build(load_run(example)))
    assert checked >= 1, f"{OPERATOR_POD_SPECS} made no pod spec for {example.name}"
