"""Pure builders: a validated SelfPlayRun → the manifests of its children (DESIGN.md §4).

No function here talks to Kubernetes; each returns plain dicts, so that every manifest can be validated
against the Kubernetes schema in unit tests and the restricted Pod Security Standard checked on every pod
spec (:func:`all_pod_specs`). Every child carries the common labels, an ownerReference to the run (the
cluster's garbage collector removes children with the run) and a hash of itself (patch only on change).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml
from opensir_operator import names

from opensir.serving import ServerConfig, server_args, server_env
from opensir.spec import ComputeResources, SelfPlayRun, SelfPlayRunSpec, dump_run, parse_run

Manifest = dict[str, Any]

GPU_RESOURCE = "nvidia.com/gpu"
RUN_USER = 1000
TRAINER_COMMAND = ("opensir", "run", f"{names.CONFIG_DIR}/{names.CONFIG_KEY}")
"""The trainer pod runs the same program as a laptop; it resumes from the last committed checkpoint."""
BOOTSTRAP_COMMAND = ("opensir", "bootstrap", f"{names.CONFIG_DIR}/{names.CONFIG_KEY}")
EVALUATE_COMMAND = ("opensir", "eval", f"{names.CONFIG_DIR}/{names.CONFIG_KEY}")
"""``opensir eval`` of a run manifest: evaluates the checkpoint at --step, stores the results next to it."""
VLLM_SERVER = ("python", "-m", "vllm.entrypoints.openai.api_server")

POD_SECURITY: Manifest = {
    "runAsNonRoot": True,
    "runAsUser": RUN_USER,
    "runAsGroup": RUN_USER,
    "fsGroup": RUN_USER,
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY: Manifest = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,  # writable: /cache (HOME, model downloads), /tmp, /dev/shm
    "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True,
    "seccompProfile": {"type": "RuntimeDefault"},
}


@dataclass(frozen=True)
class Target:
    """What the builders need: the accepted run, its uid (for ownerReferences) and the resolved image."""

    run: SelfPlayRun
    uid: str
    image: str

    @property
    def name(self) -> str:
        """The run's name."""
        return self.run.metadata.name

    @property
    def namespace(self) -> str:
        """The run's namespace, which its children share."""
        return self.run.metadata.namespace


def make_target(run: SelfPlayRun, uid: str, default_image: str) -> Target:
    """The builders' input: spec.cluster.image wins over the operator's default image."""
    return Target(run=run, uid=uid, image=run.spec.cluster.image or default_image)


# ------------------------------------------------------------------------------------------ helpers
def spec_hash(manifest: Manifest) -> str:
    """Stable hash of a manifest without its own hash annotation."""
    meta = dict(manifest.get("metadata", {}))
    annotations = {k: v for k, v in meta.get("annotations", {}).items() if k != names.SPEC_HASH}
    meta["annotations"] = annotations
    text = json.dumps({**manifest, "metadata": meta}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def child_metadata(t: Target, name: str, component: str, **annotations: str) -> Manifest:
    """A child's metadata: its name in the run's namespace, the common labels (how the operator's watches
    find it), an ownerReference to the run (the garbage collector removes it with the run) and
    ``annotations``."""
    return {
        "name": name,
        "namespace": t.namespace,
        "labels": names.common_labels(t.name, component),
        "annotations": dict(annotations),
        "ownerReferences": [
            {
                "apiVersion": names.RUN_API_VERSION,
                "kind": names.RUN_KIND,
                "name": t.name,
                "uid": t.uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
    }


def finish(manifest: Manifest) -> Manifest:
    """Stamp a built manifest with its hash: the last call of every builder."""
    manifest["metadata"]["annotations"][names.SPEC_HASH] = spec_hash(manifest)
    return manifest


def _resources(resources: ComputeResources, gpus: int) -> Manifest:
    requests = dict(resources.requests)
    limits = dict(resources.limits)
    if gpus:
        # Extended resources must have equal requests and limits.
        requests[GPU_RESOURCE] = str(gpus)
        limits[GPU_RESOURCE] = str(gpus)
    out: Manifest = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def _env(**values: str) -> list[Manifest]:
    return [{"name": key, "value": value} for key, value in values.items()]


def _storage_env(t: Target) -> list[Manifest]:
    """S3 credentials from the run's Secret (never from the spec), keys as the runner reads them."""
    secret = t.run.spec.storage.credentials_secret
    if secret is None:
        return []
    return [
        {"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    ]


def _container(
    t: Target,
    name: str,
    command: list[str],
    args: list[str],
    resources: Manifest,
    env: list[Manifest],
    mounts: list[Manifest],
    ports: list[Manifest],
) -> Manifest:
    container: Manifest = {
        "name": name,
        "image": t.image,
        "imagePullPolicy": t.run.spec.cluster.image_pull_policy,
        "command": command,
        "args": args,
        "env": [*_env(HOME="/cache", HF_HOME="/cache/huggingface"), *env],
        "resources": resources,
        "securityContext": dict(CONTAINER_SECURITY),
        "volumeMounts": [
            {"name": "cache", "mountPath": "/cache"},
            {"name": "tmp", "mountPath": "/tmp"},
            *mounts,
        ],
    }
    if ports:
        container["ports"] = ports
    return container


def _pod_spec(
    t: Target,
    containers: list[Manifest],
    *,
    restart_policy: str,
    shm: bool,
    config: bool,
    extra: Manifest | None = None,
) -> Manifest:
    cluster = t.run.spec.cluster
    volumes: list[Manifest] = [{"name": "cache", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}]
    if config:
        volumes.append({"name": "config", "configMap": {"name": names.config_name(t.name)}})
    if shm:
        # vLLM and torch's collectives need more shared memory than the container runtime's 64 MiB.
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory"}})
    spec: Manifest = {
        "restartPolicy": restart_policy,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": dict(POD_SECURITY),
        "containers": containers,
        "volumes": volumes,
    }
    if cluster.service_account_name:
        spec["serviceAccountName"] = cluster.service_account_name
    if cluster.priority_class_name:
        spec["priorityClassName"] = cluster.priority_class_name
    if cluster.node_selector:
        spec["nodeSelector"] = dict(cluster.node_selector)
    if cluster.tolerations:
        spec["tolerations"] = [
            tol.model_dump(mode="json", by_alias=True, exclude_none=True) for tol in cluster.tolerations
        ]
    spec.update(extra or {})
    return spec


def _mounts(config: bool, shm: bool) -> list[Manifest]:
    mounts = []
    if config:
        mounts.append({"name": "config", "mountPath": names.CONFIG_DIR, "readOnly": True})
    if shm:
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    return mounts


def _http_probe(path: str, period: int, failures: int) -> Manifest:
    return {"httpGet": {"path": path, "port": "http"}, "periodSeconds": period, "failureThreshold": failures}


# ------------------------------------------------------------------------------------------ config
def service_url(t: Target, service: str) -> str:
    """The OpenAI-compatible base URL of one of the run's servers, inside the cluster."""
    return f"http://{service}.{t.namespace}.svc:{names.ROLLOUT_PORT}/v1"


def needs_rollout_server(t: Target) -> bool:
    """The run's own vLLM server, unless the spec points at an existing one."""
    return t.run.spec.rollout.url is None


def needs_embed_server(t: Target) -> bool:
    """The run's own embedding server: only when the spec embeds through a server and names none."""
    embedding = t.run.spec.embedding
    return embedding.engine == "server" and embedding.url is None


def runner_document(t: Target) -> Manifest:
    """The run.yaml of the pods: the accepted spec, with generation and embedding pointed at the run's
    servers (a cluster always generates through the rollout server; see RolloutSpec.engine)."""
    document = dump_run(t.run)
    document.pop("status", None)
    document["metadata"] = {"name": t.name, "namespace": t.namespace}
    spec = document["spec"]
    spec["rollout"]["engine"] = "server"
    if needs_rollout_server(t):
        spec["rollout"]["url"] = service_url(t, names.rollout_name(t.name))
    if needs_embed_server(t):
        spec["embedding"]["url"] = service_url(t, names.embed_name(t.name))
    return dump_run(parse_run(document, "run.yaml for the cluster"))


def cluster_spec(t: Target) -> SelfPlayRunSpec:
    """The spec the run's pods run with (:func:`runner_document`)."""
    return parse_run(runner_document(t), "run.yaml for the cluster").spec


def config_map(t: Target) -> Manifest:
    """The run's run.yaml (:func:`runner_document`), mounted by every pod that runs ``opensir``."""
    text = yaml.safe_dump(runner_document(t), sort_keys=False)
    return finish(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": child_metadata(t, names.config_name(t.name), "config"),
            "data": {names.CONFIG_KEY: text},
        }
    )


# ------------------------------------------------------------------------------------------ servers
def _server_deployment(
    t: Target,
    name: str,
    component: str,
    replicas: int,
    args: list[str],
    resources: Manifest,
    env: list[Manifest],
) -> Manifest:
    container = _container(
        t,
        "server",
        list(VLLM_SERVER),
        args,
        resources,
        env,
        _mounts(config=False, shm=True),
        [{"name": "http", "containerPort": names.ROLLOUT_PORT, "protocol": "TCP"}],
    )
    # Loading a model takes minutes: a generous startup probe, then readiness gates the Service.
    container["startupProbe"] = _http_probe("/health", 10, 180)
    container["readinessProbe"] = _http_probe("/health", 10, 3)
    container["livenessProbe"] = _http_probe("/health", 30, 5)
    labels = names.common_labels(t.name, component)
    return finish(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": child_metadata(t, name, component),
            "spec": {
                "replicas": replicas,
                # GPU servers cannot surge: a rolling update would need a second set of GPUs.
                "strategy": {"type": "Recreate"},
                "selector": {"matchLabels": names.selector_labels(t.name, component)},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": _pod_spec(t, [container], restart_policy="Always", shm=True, config=False),
                },
            },
        }
    )


def rollout_deployment(t: Target, replicas: int) -> Manifest:
    """vLLM's OpenAI server for the policy; the trainer pushes new weights to it (full or LoRA).

    Its arguments and environment come from :mod:`opensir.serving`, which also defines
    the weight-update protocol the trainer's WeightSync speaks to it.
    """
    spec = t.run.spec
    rollout, model = spec.rollout, spec.model
    config = ServerConfig(
        model=model.name,
        served_model_name=model.name,
        host="0.0.0.0",
        port=names.ROLLOUT_PORT,
        dtype=model.dtype,
        max_model_len=rollout.max_model_len,
        seed=spec.training.seed,
        enable_lora=spec.training.lora.enabled,
        max_lora_rank=spec.training.lora.rank,
        tensor_parallel=rollout.tensor_parallel,
        gpu_memory_utilization=rollout.gpu_memory_utilization,
        revision=model.revision,
        trust_remote_code=model.trust_remote_code,
        whole_prefill=rollout.gpus == 0,  # vLLM's CPU build (see whole_prefill_options)
    )
    args = server_args(config)
    env = _env(**server_env(config))
    if cluster_spec(t).weight_sync_kind() in ("store", "lora"):
        env += _storage_env(t)  # the servers fetch what the trainer publishes in the run's storage
    return _server_deployment(
        t,
        names.rollout_name(t.name),
        "rollout",
        replicas,
        args,
        _resources(spec.resources.rollout, rollout.gpus),
        env,
    )


def embed_deployment(t: Target, replicas: int) -> Manifest:
    """vLLM serving the sentence embedder as a pooling model (``--runner pooling --convert embed``)."""
    spec = t.run.spec
    args = [
        "--model",
        spec.embedding.model,
        "--served-model-name",
        spec.embedding.model,
        "--host",
        "0.0.0.0",
        "--port",
        str(names.ROLLOUT_PORT),
        "--runner",
        "pooling",
        "--convert",
        "embed",
    ]
    return _server_deployment(
        t,
        names.embed_name(t.name),
        "embed",
        replicas,
        args,
        _resources(spec.resources.embedding, spec.embedding.gpus),
        [],
    )


def _service(
    t: Target,
    name: str,
    component: str,
    ports: list[Manifest],
    *,
    headless: bool = False,
    not_ready: bool = False,
) -> Manifest:
    spec: Manifest = {"selector": names.selector_labels(t.name, component), "ports": ports}
    if headless:
        spec.update({"clusterIP": "None", "publishNotReadyAddresses": not_ready})
    else:
        spec["type"] = "ClusterIP"
    return finish(
        {"apiVersion": "v1", "kind": "Service", "metadata": child_metadata(t, name, component), "spec": spec}
    )


def rollout_service(t: Target) -> Manifest:
    """Headless: its name resolves to every ready rollout pod, so that the trainer spreads generation
    over the replicas and pushes new weights to each one (opensir.engines.replicas)."""
    port = {"name": "http", "port": names.ROLLOUT_PORT, "targetPort": "http", "protocol": "TCP"}
    return _service(t, names.rollout_name(t.name), "rollout", [port], headless=True)


def embed_service(t: Target) -> Manifest:
    """A ClusterIP Service in front of the embedding servers (any replica answers alike)."""
    port = {"name": "http", "port": names.ROLLOUT_PORT, "targetPort": "http", "protocol": "TCP"}
    return _service(t, names.embed_name(t.name), "embed", [port])


def train_service(t: Target) -> Manifest:
    """Headless Service of a multi-node training Job: gives pod 0 the name the others rendezvous at."""
    port = {
        "name": "rdzv",
        "port": names.RENDEZVOUS_PORT,
        "targetPort": names.RENDEZVOUS_PORT,
        "protocol": "TCP",
    }
    # Stable DNS names per pod (R-train-0.R-train) for the rendezvous, before the pods are ready.
    return _service(t, names.train_name(t.name), "train", [port], headless=True, not_ready=True)


def network_policy(t: Target, extra_ingress: Sequence[Manifest] = ()) -> Manifest:
    """Admits traffic to the run's pods only from the run's own pods, on every port (rollout and
    embedding servers, whose development routes load weights; the trainer's weight-sync and
    rendezvous ports), then ``extra_ingress`` (the chart's ``networkPolicy.runExtraIngress``)."""
    own = {"podSelector": {"matchLabels": {names.RUN_LABEL: t.name}}}
    return finish(
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": child_metadata(t, names.network_policy_name(t.name), "network"),
            "spec": {
                "podSelector": {"matchLabels": {names.RUN_LABEL: t.name}},
                "policyTypes": ["Ingress"],
                "ingress": [{"from": [own]}, *extra_ingress],
            },
        }
    )


# ------------------------------------------------------------------------------------------ jobs
def _job(
    t: Target,
    name: str,
    component: str,
    pod: Manifest,
    *,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    extra: Manifest | None = None,
) -> Manifest:
    metadata = child_metadata(t, name, component, **(annotations or {}))
    metadata["labels"].update(labels or {})
    spec: Manifest = {
        "backoffLimit": 0,
        "template": {"metadata": {"labels": names.common_labels(t.name, component)}, "spec": pod},
    }
    spec.update(extra or {})
    return finish({"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": spec})


def _trainer_args(t: Target) -> tuple[list[str], list[Manifest]]:
    """Command and extra env of a training pod: plain ``opensir run`` on one process, torchrun otherwise."""
    training = t.run.spec.training
    processes = max(training.gpus_per_node, 1)
    if training.nodes > 1:
        master = f"{names.train_name(t.name)}-0.{names.train_name(t.name)}.{t.namespace}.svc"
        env = [
            {
                "name": "NODE_RANK",
                "valueFrom": {
                    "fieldRef": {
                        "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"
                    }
                },
            },
            *_env(
                NNODES=str(training.nodes),
                NPROC_PER_NODE=str(processes),
                MASTER_ADDR=master,
                MASTER_PORT=str(names.RENDEZVOUS_PORT),
            ),
        ]
        command = [
            "torchrun",
            "--nnodes=$(NNODES)",
            "--node-rank=$(NODE_RANK)",
            "--nproc-per-node=$(NPROC_PER_NODE)",
            "--master-addr=$(MASTER_ADDR)",
            "--master-port=$(MASTER_PORT)",
            "--no-python",
            *TRAINER_COMMAND,
        ]
        return command, env
    if processes > 1:
        command = [
            "torchrun",
            "--standalone",
            f"--nproc-per-node={processes}",
            "--no-python",
            *TRAINER_COMMAND,
        ]
        return command, []
    return list(TRAINER_COMMAND), []


def _weight_sync_env() -> list[Manifest]:
    """Where the rollout servers reach the trainer for ``weightSync: broadcast``: its pod IP, on a
    fixed port (opensir.engines.remote)."""
    return [
        {"name": "OPENSIR_TRAINER_ADDRESS", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        *_env(OPENSIR_WEIGHT_SYNC_PORT=str(names.WEIGHT_SYNC_PORT)),
    ]


def train_job(t: Target, attempt: int) -> Manifest:
    """The runner with DeepSpeed/torch. backoffLimit 0: a failed pod fails the Job, and the operator
    restarts it from the last committed checkpoint and counts the restart (spec.backoffLimit)."""
    spec = t.run.spec
    training = spec.training
    command, env = _trainer_args(t)
    container = _container(
        t,
        "trainer",
        command,
        [],
        _resources(spec.resources.trainer, training.gpus_per_node),
        [*env, *_storage_env(t), *_env(OPENSIR_METRICS_PORT=str(names.METRICS_PORT)), *_weight_sync_env()],
        _mounts(config=True, shm=True),
        [
            {"name": "metrics", "containerPort": names.METRICS_PORT, "protocol": "TCP"},
            {"name": "weight-sync", "containerPort": names.WEIGHT_SYNC_PORT, "protocol": "TCP"},
        ],
    )
    if training.nodes > 1:
        container["ports"].append({"name": "rdzv", "containerPort": names.RENDEZVOUS_PORT, "protocol": "TCP"})
    pod_extra: Manifest = {"terminationGracePeriodSeconds": 300}  # time to checkpoint on SIGTERM
    # A pod evicted or preempted (DisruptionTarget) checkpoints on SIGTERM and exits 143; the Job
    # controller replaces it without counting a failure, so preemption never uses up backoffLimit.
    job_extra: Manifest = {
        "podFailurePolicy": {
            "rules": [
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
            ]
        }
    }
    if training.nodes > 1:
        pod_extra["subdomain"] = names.train_name(t.name)
        job_extra |= {
            "completionMode": "Indexed",
            "completions": training.nodes,
            "parallelism": training.nodes,
        }
    labels: dict[str, str] = {}
    if spec.cluster.queue_name:
        # Kueue admits the Job by unsuspending it; created suspended so it never starts unadmitted.
        labels[names.KUEUE_QUEUE] = spec.cluster.queue_name
        job_extra["suspend"] = True
    pod = _pod_spec(t, [container], restart_policy="Never", shm=True, config=True, extra=pod_extra)
    return _job(
        t,
        names.train_name(t.name),
        "train",
        pod,
        labels=labels,
        annotations={names.ATTEMPT: str(attempt)},
        extra=job_extra,
    )


def bootstrap_job(t: Target) -> Manifest:
    """Grows the seed problems into an in-band pool through the rollout server before training."""
    spec = t.run.spec
    container = _container(
        t,
        "bootstrap",
        list(BOOTSTRAP_COMMAND),
        [],
        _resources(spec.resources.trainer, 0),
        _storage_env(t),
        _mounts(config=True, shm=False),
        [],
    )
    pod = _pod_spec(t, [container], restart_policy="Never", shm=False, config=True)
    return _job(t, names.bootstrap_name(t.name), "bootstrap", pod, extra={"backoffLimit": 2})


def eval_job(t: Target, step: int) -> Manifest:
    """Benchmark evaluation of the checkpoint at ``step`` (its own engine; the servers may be gone)."""
    spec = t.run.spec
    container = _container(
        t,
        "evaluate",
        [*EVALUATE_COMMAND, "--out", "/tmp/opensir-eval", "--no-progress", "--step", str(step)],
        [],
        _resources(spec.resources.trainer, spec.training.gpus_per_node),
        _storage_env(t),
        _mounts(config=True, shm=True),
        [],
    )
    pod = _pod_spec(t, [container], restart_policy="Never", shm=True, config=True)
    return _job(
        t,
        names.eval_name(t.name, step),
        "eval",
        pod,
        annotations={names.EVAL_STEP: str(step)},
        extra={"backoffLimit": 1},
    )


# ------------------------------------------------------------------------------------------ overview
def all_manifests(
    t: Target, *, replicas: int | None = None, attempt: int = 0, eval_step: int | None = None
) -> list[Manifest]:
    """Every manifest the builders can make for this run (what validation tests walk)."""
    spec = t.run.spec
    step = spec.training.max_steps if eval_step is None else eval_step
    manifests = [
        config_map(t),
        rollout_deployment(t, spec.rollout.replicas if replicas is None else replicas),
        rollout_service(t),
        embed_deployment(t, spec.embedding.replicas if replicas is None else replicas),
        embed_service(t),
        bootstrap_job(t),
        train_job(t, attempt),
        eval_job(t, step),
    ]
    if spec.training.nodes > 1:
        manifests.append(train_service(t))
    manifests.append(network_policy(t))
    return manifests


def pod_spec_of(manifest: Manifest) -> Manifest | None:
    """The pod spec of a Deployment or Job; None for the other kinds."""
    if manifest["kind"] in ("Deployment", "Job"):
        return manifest["spec"]["template"]["spec"]
    return None


def all_pod_specs(t: Target) -> list[Manifest]:
    """Every pod spec the builders can make for this run, for Pod Security Standard checks."""
    return [spec for m in all_manifests(t) if (spec := pod_spec_of(m)) is not None]
