#!/usr/bin/env bash
# The evaluation baseline of docs/results.md: SmolLM2-135M-Instruct before any self-play, on a fixed,
# seeded sample of 50 problems of each math benchmark (all 30 of AIME 2024 and all 40 of AMC 2023),
# n=2 samples per problem, the paper's sampling (temperature 0.6, top-p 0.95), through a local vLLM
# server (.venv-vllm, scripts/install_vllm.sh); on 2 CPU cores it is as fast as transformers at this
# batch size (docs/benchmarks.md), and the same command runs a GPU box. Run it on a quiet machine; it
# resumes from its cache when interrupted (run it again).
#
#   bash scripts/eval_baseline.sh [MAX_TOKENS] [OUT]        (defaults: 1024, runs/eval-baseline)
#
# Extra arguments after OUT go to `opensir eval` (e.g. --engine hf --threads 2). Writes docs/results.md
# ($RESULTS_DOC overrides, e.g. for a smoke test with --max-problems 2 --samples 1).
set -euo pipefail
cd "$(dirname "$0")/.."
max_tokens="${1:-1024}"
out="${2:-runs/eval-baseline}"
doc="${RESULTS_DOC:-docs/results.md}"
shift $(( $# > 2 ? 2 : $# ))
command=(.venv/bin/opensir eval builtin:smollm2-135m-instruct --engine vllm --max-problems 50 --samples 2
  --temperature 0.6 --top-p 0.95 --max-tokens "$max_tokens" --seed 0 --prompts-per-batch 32 --out "$out" "$@")
started=$(date +%s)
"${command[@]}" --no-progress
seconds=$(( $(date +%s) - started ))
{
  echo "# Evaluation baseline: SmolLM2-135M-Instruct before self-play"
  echo
  echo "The number self-play runs are measured against: the base policy of the tiny example on the seven"
  echo "math benchmarks, with the paper's evaluation protocol (its prompt, its math-verify check, see"
  echo "docs/method.md; temperature 0.6, top-p 0.95) scaled down for a CPU: n=2 samples per problem on a fixed,"
  echo "seeded sample of 50 problems per benchmark (all 30 of AIME 2024 and all 40 of AMC 2023), at most"
  echo "$max_tokens tokens per response."
  echo
  echo '```'
  echo "${command[*]}"
  echo '```'
  echo
  cpu=$(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -n 1)
  echo "Wall time: $(( seconds / 60 )) min $(( seconds % 60 )) s on $(nproc) CPU cores (${cpu:-$(uname -m)}), model"
  echo "loading and the vLLM server's start included; $(date -u +%Y-%m-%d)."
  echo
  cat "$out/results.md"
  echo
  echo "Mean accuracy is the paper's number: the share of right answers over the n samples, averaged over"
  echo "problems; pass@2 counts a problem when either sample is right; maj@2 takes the more frequent"
  echo "answer (the first on a tie). The macro average weights every benchmark equally. Per-problem answers"
  echo "are in \`$out/<benchmark>.json\`, every response in \`$out/generations.jsonl\`."
} > "$doc"
echo "wrote $doc (${seconds} s)"
