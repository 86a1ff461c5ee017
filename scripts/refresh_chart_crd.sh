#!/usr/bin/env bash
# Regenerates crds/selfplayrun.yaml from opensir/spec.py and copies it into the Helm chart, which renders
# it from charts/opensir/files/selfplayrun.yaml (tests/unit/test_chart.py checks both are byte-identical).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
"$VENV/bin/opensir" crd > crds/selfplayrun.yaml
cp crds/selfplayrun.yaml charts/opensir/files/selfplayrun.yaml
echo "refreshed crds/selfplayrun.yaml and charts/opensir/files/selfplayrun.yaml"
