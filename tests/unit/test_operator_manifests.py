"""The operator's builders: every manifest validates against Kubernetes 1.33 (strict), carries the common
labels and an ownerReference, passes the spec through, and every pod spec meets the restricted PSS."""

from __future__ import annotations

from typing import Any

import pytest

kubernetes_validate = pytest.importorskip("kubernetes_validate")

from opensir_operator import manifests, names  # noqa: E402

from opensir.spec import parse_run  # noqa: E402

UID = "0f8e4c5a-1111-2222-3333-444455556666"

VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "gpus-queue-placement": {
        "rollout": {"gpus": 2, "tensorParallel": 2, "replicas": 2, "maxModelLen": 4096},
        "training": {"gpusPerNode": 1},
        "resources": {
            "trainer": {"requests": {"cpu": 8, "memory": "64Gi"}, "limits": {"memory": "80Gi"}},
            "rollout": {"requests": {"cpu": "4"}},
        },
        "cluster": {
            "image": "registry.example/opensir:1.2",
            "imagePullPolicy": "Always",
            "queueName": "team-a",
            "priorityClassName": "training",
            "serviceAccountName": "runner",
            "nodeSelector": {"nvidia.com/gpu.product": "H100"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        },
        "storage": {"uri": "s3://bucket/runs", "credentialsSecret": "s3-creds", "endpoint": "minio:9000"},
    },
    "multi-node-deepspeed-lora-embed-server": {
        "training": {"nodes": 3, "engine": "deepspeed", "gpusPerNode": 8, "lora": {"enabled": True}},
        "embedding": {"engine": "server", "gpus": 1, "replicas": 2},
        "model": {"name": "meta-llama/Llama-3.2-3B-Instruct", "revision": "main", "trustRemoteCode": True},
        "selfPlay": {"bootstrap": {"enabled": True}},
        "evaluation": {"benchmarks": ["gsm8k", "math500"], "every": 25},
    },
    "single-node-multi-gpu": {"training": {"engine": "deepspeed", "gpusPerNode": 4}},
    "external-servers": {"rollout": {"url": "http://vllm.shared:8000/v1"}},
}


def target(name: str = "demo", namespace: str = "team", **spec: Any) -> manifests.Target:
    body = {"model": {"name": "HuggingFaceTB/SmolLM2-135M-Instruct"}, **spec}
    run = parse_run(
        {
            "apiVersion": "opensir.io/v1alpha1",
            "kind": "SelfPlayRun",
            "metadata": {"name": name, "namespace": namespace},
            "spec": body,
        }
    )
    return manifests.make_target(run, UID, "ghcr.io/opensir/opensir:test")


@pytest.fixture(params=sorted(VARIANTS), name="variant")
def variant_fixture(request: pytest.FixtureRequest) -> manifests.Target:
    return target(**VARIANTS[request.param])


def test_every_manifest_validates_for_kubernetes_1_33_strict(variant: manifests.Target):
    built = manifests.all_manifests(variant)
    assert {m["kind"] for m in built} >= {"ConfigMap", "Deployment", "Service", "Job"}
    for manifest in built:
        kubernetes_validate.validate(manifest, "1.33", strict=True)
    for replicas in (0, 3):
        for manifest in manifests.all_manifests(variant, replicas=replicas, attempt=2, eval_step=25):
            kubernetes_validate.validate(manifest, "1.33", strict=True)


def test_strict_validation_catches_a_broken_manifest():
    broken = manifests.config_map(target())
    broken["metadata"]["nmae"] = "typo"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, "1.33", strict=True)


def test_children_have_deterministic_names_common_labels_and_an_owner(variant: manifests.Target):
    for manifest in manifests.all_manifests(variant):
        meta = manifest["metadata"]
        assert meta["name"].startswith("demo-")
        assert meta["namespace"] == "team"
        assert meta["labels"][names.PART_OF] == "opensir"
        assert meta["labels"][names.RUN_LABEL] == "demo"
        assert meta["ownerReferences"] == [
            {
                "apiVersion": "opensir.io/v1alpha1",
                "kind": "SelfPlayRun",
                "name": "demo",
                "uid": UID,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        assert meta["annotations"][names.SPEC_HASH] == manifests.spec_hash(manifest)
        pod = manifests.pod_spec_of(manifest)
        if pod is not None:
            template_labels = manifest["spec"]["template"]["metadata"]["labels"]
            assert template_labels[names.RUN_LABEL] == "demo"
    built = {(m["kind"], m["metadata"]["name"]) for m in manifests.all_manifests(variant)}
    assert {
        ("ConfigMap", "demo-config"),
        ("Deployment", "demo-rollout"),
        ("Service", "demo-rollout"),
        ("Deployment", "demo-embed"),
        ("Service", "demo-embed"),
        ("Job", "demo-bootstrap"),
        ("Job", "demo-train"),
    } <= built


def test_every_pod_spec_meets_the_restricted_pod_security_standard(variant: manifests.Target):
    pods = manifests.all_pod_specs(variant)
    assert len(pods) == 5  # rollout, embed, bootstrap, train, eval
    for pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
        for volume in pod["volumes"]:
            assert set(volume) & {"emptyDir", "configMap"}, volume  # no hostPath
        for container in pod["containers"] + pod.get("initContainers", []):
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False
            assert security["capabilities"] == {"drop": ["ALL"]}
            assert security["runAsNonRoot"] is True
            assert security["seccompProfile"] == {"type": "RuntimeDefault"}
            assert not security.get("privileged")


def test_placement_and_image_pass_through_from_the_spec():
    t = target(**VARIANTS["gpus-queue-placement"])
    train = manifests.train_job(t, attempt=0)
    pod = train["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "registry.example/opensir:1.2"
    assert container["imagePullPolicy"] == "Always"
    assert pod["priorityClassName"] == "training"
    assert pod["serviceAccountName"] == "runner"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "H100"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert container["resources"] == {
        "requests": {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": "1"},
        "limits": {"memory": "80Gi", "nvidia.com/gpu": "1"},
    }
    # Kueue: the queue label and a suspended Job that Kueue unsuspends on admission.
    assert train["metadata"]["labels"][names.KUEUE_QUEUE] == "team-a"
    assert train["spec"]["suspend"] is True
    rollout = manifests.rollout_deployment(t, replicas=2)
    server = rollout["spec"]["template"]["spec"]["containers"][0]
    assert server["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert rollout["spec"]["replicas"] == 2
    assert server["args"][server["args"].index("--tensor-parallel-size") + 1] == "2"
    assert server["args"][server["args"].index("--max-model-len") + 1] == "4096"
    # S3 credentials come from the Secret, by reference.
    env = {e["name"]: e for e in container["env"]}
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"] == {
        "secretKeyRef": {"name": "s3-creds", "key": "AWS_ACCESS_KEY_ID"}
    }
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "s3-creds"
    default = target()
    assert manifests.train_job(default, 0)["spec"]["template"]["spec"]["containers"][0]["image"] == (
        "ghcr.io/opensir/opensir:test"
    )
    assert "suspend" not in manifests.train_job(default, 0)["spec"]


def test_trainer_command_single_process_runs_opensir_run():
    job = manifests.train_job(target(), attempt=3)
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["opensir", "run", "/etc/opensir/run.yaml"]
    assert job["metadata"]["annotations"][names.ATTEMPT] == "3"
    assert job["spec"]["backoffLimit"] == 0  # the operator restarts from the checkpoint and counts it
    assert {"name": "config", "mountPath": "/etc/opensir", "readOnly": True} in container["volumeMounts"]
    # Preemption is not a failure: the pod checkpointed on SIGTERM and a replacement resumes from it.
    [rule] = job["spec"]["podFailurePolicy"]["rules"]
    assert rule == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}


def test_multi_node_training_is_an_indexed_job_with_a_headless_service_and_rendezvous_env():
    t = target(**VARIANTS["multi-node-deepspeed-lora-embed-server"])
    job = manifests.train_job(t, attempt=0)
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 3
    pod = job["spec"]["template"]["spec"]
    assert pod["subdomain"] == "demo-train"
    container = pod["containers"][0]
    assert container["command"][:1] == ["torchrun"]
    assert "--no-python" in container["command"]
    assert container["command"][-3:] == ["opensir", "run", "/etc/opensir/run.yaml"]
    env = {e["name"]: e for e in container["env"]}
    assert env["MASTER_ADDR"]["value"] == "demo-train-0.demo-train.team.svc"
    assert env["MASTER_PORT"]["value"] == "29500"
    assert env["NNODES"]["value"] == "3"
    assert env["NPROC_PER_NODE"]["value"] == "8"
    assert "job-completion-index" in env["NODE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"]
    service = manifests.train_service(t)
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"] == {names.RUN_LABEL: "demo", names.COMPONENT: "train"}
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "8"


def test_single_node_multi_gpu_uses_torchrun_standalone():
    container = manifests.train_job(target(**VARIANTS["single-node-multi-gpu"]), 0)["spec"]["template"][
        "spec"
    ]["containers"][0]
    assert container["command"][:3] == ["torchrun", "--standalone", "--nproc-per-node=4"]


def test_servers_run_vllm_openai_and_pooling_embeddings():
    t = target(**VARIANTS["multi-node-deepspeed-lora-embed-server"])
    rollout = manifests.rollout_deployment(t, 1)["spec"]["template"]["spec"]["containers"][0]
    assert rollout["command"] == ["python", "-m", "vllm.entrypoints.openai.api_server"]
    args = rollout["args"]
    assert args[args.index("--model") + 1] == "meta-llama/Llama-3.2-3B-Instruct"
    assert args[args.index("--port") + 1] == "8000"
    assert args[args.index("--revision") + 1] == "main"
    assert "--trust-remote-code" in args and "--enable-lora" in args
    assert {"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"} in rollout["env"]
    assert rollout["readinessProbe"]["httpGet"]["path"] == "/health"
    embed = manifests.embed_deployment(t, 2)
    embed_args = embed["spec"]["template"]["spec"]["containers"][0]["args"]
    assert embed_args[embed_args.index("--runner") + 1] == "pooling"
    assert embed_args[embed_args.index("--convert") + 1] == "embed"
    assert embed["spec"]["replicas"] == 2
    assert embed["spec"]["selector"]["matchLabels"] == {names.RUN_LABEL: "demo", names.COMPONENT: "embed"}
    assert manifests.embed_service(t)["spec"]["selector"] == embed["spec"]["selector"]["matchLabels"]


def test_config_map_holds_the_runners_run_yaml_pointing_at_the_run_servers():
    import yaml

    t = target(**VARIANTS["multi-node-deepspeed-lora-embed-server"])
    document = yaml.safe_load(manifests.config_map(t)["data"]["run.yaml"])
    run = parse_run(document)  # the runner accepts it
    assert run.metadata.name == "demo" and run.metadata.namespace == "team"
    assert run.spec.rollout.engine == "server"
    assert run.spec.rollout.url == "http://demo-rollout.team.svc:8000/v1"
    assert run.spec.embedding.url == "http://demo-embed.team.svc:8000/v1"
    assert "status" not in document
    external = target(**VARIANTS["external-servers"])
    assert not manifests.needs_rollout_server(external)
    assert parse_run(yaml.safe_load(manifests.config_map(external)["data"]["run.yaml"])).spec.rollout.url == (
        "http://vllm.shared:8000/v1"
    )


def test_bootstrap_and_eval_jobs():
    t = target(**VARIANTS["multi-node-deepspeed-lora-embed-server"])
    boot = manifests.bootstrap_job(t)
    assert boot["metadata"]["name"] == "demo-bootstrap"
    assert boot["spec"]["template"]["spec"]["containers"][0]["command"][:2] == ["opensir", "bootstrap"]
    evaluation = manifests.eval_job(t, 25)
    assert evaluation["metadata"]["name"] == "demo-eval-25"
    assert evaluation["metadata"]["annotations"][names.EVAL_STEP] == "25"
    assert evaluation["spec"]["template"]["spec"]["containers"][0]["command"][-2:] == ["--step", "25"]


def test_spec_hash_is_stable_and_follows_changes():
    t = target()
    assert manifests.rollout_deployment(t, 1) == manifests.rollout_deployment(t, 1)
    one = manifests.rollout_deployment(t, 1)["metadata"]["annotations"][names.SPEC_HASH]
    zero = manifests.rollout_deployment(t, 0)["metadata"]["annotations"][names.SPEC_HASH]
    assert one != zero


def test_the_rollout_service_resolves_to_every_ready_replica():
    service = manifests.rollout_service(target(rollout={"replicas": 3}))["spec"]
    # Headless: the trainer resolves it to each pod, to spread requests and push weights to all.
    assert service["clusterIP"] == "None" and service["publishNotReadyAddresses"] is False
    train = manifests.train_service(target(**VARIANTS["multi-node-deepspeed-lora-embed-server"]))["spec"]
    assert train["publishNotReadyAddresses"] is True  # the rendezvous needs names before readiness


def test_weight_sync_wiring_between_trainer_and_rollout_pods():
    storage = {"uri": "s3://bucket/runs", "credentialsSecret": "s3-creds", "endpoint": "minio:9000"}
    broadcast = target(storage=storage)
    trainer = manifests.train_job(broadcast, 0)["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in trainer["env"]}
    assert env["OPENSIR_TRAINER_ADDRESS"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert env["OPENSIR_WEIGHT_SYNC_PORT"]["value"] == str(names.WEIGHT_SYNC_PORT)
    assert {"name": "weight-sync", "containerPort": names.WEIGHT_SYNC_PORT, "protocol": "TCP"} in trainer[
        "ports"
    ]

    def rollout_env(t: manifests.Target) -> set[str]:
        container = manifests.rollout_deployment(t, 1)["spec"]["template"]["spec"]["containers"][0]
        return {e["name"] for e in container["env"]}

    # Only the syncs that go through the run's storage give the servers its credentials.
    assert "AWS_ACCESS_KEY_ID" not in rollout_env(broadcast)
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= rollout_env(
        target(storage=storage, training={"lora": {"enabled": True}})
    )
    assert "AWS_ACCESS_KEY_ID" in rollout_env(target(storage=storage, rollout={"weightSync": "store"}))


def test_cpu_rollout_servers_prefill_whole_prompts():
    def args(**rollout: Any) -> list[str]:
        t = target(rollout={"maxModelLen": 4096, **rollout})
        return manifests.rollout_deployment(t, 1)["spec"]["template"]["spec"]["containers"][0]["args"]

    cpu = args(gpus=0)
    assert "--no-enable-chunked-prefill" in cpu
    assert cpu[cpu.index("--max-num-batched-tokens") + 1] == "4096"
    assert "--no-enable-chunked-prefill" not in args(gpus=1)
