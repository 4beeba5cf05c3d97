#!/usr/bin/env bash
# Issue 19's GPU measurements as one run on a lent machine (docs/benchmarks.md,
# "Speed at scale"): the README models' evaluation (realised / theoretical), the
# forced benchmark on base100m and gemma3_1b in bfloat16, sequential mode against a
# hand-written loop and one-thread PASTA rounds against sequential steps for every
# CPU preset, and batched throughput.
#
#   bash scripts/gpu_speed_check.sh OUT_DIR [RUNS_DIR]
#
# OUT_DIR gets one .txt per benchmark (the tables to copy into docs/benchmarks.md)
# and eval/ from the evaluation. RUNS_DIR holds the README's two trained runs,
# synth_pasta and synth_sequential (the main job's workdir; their last checkpoint is
# enough); without it the evaluation is skipped. Each benchmark runs under its own
# time limit (seconds, first column below) so that one slow step cannot use up a
# lease, and a failed one does not stop the others; the exit status is the number
# of benchmarks that failed or ran out of time.
#
# It needs jax with a GPU backend and the package importable by $PYTHON (default:
# python) (`pip install -e .`, or PYTHONPATH=. where jax, flax and the other
# dependencies are installed already);
# it refuses to run on another backend unless GPU_CHECK_ANY_BACKEND=1 (a dry run of
# the commands, e.g. on a CPU with GPU_CHECK_QUICK=1, which shrinks every size: about
# 2 minutes on 2 cores). Of the package's imports, a CUDA image with jax, flax, orbax,
# sentencepiece, absl-py and tqdm lacks ml-collections alone (a pure-Python wheel:
# `pip download --no-deps ml-collections -d WHEELS`, then there `pip install --no-index
# --no-deps --target /tmp/site WHEELS/*.whl` and PYTHONPATH=.:/tmp/site). The full run
# takes at most the sum of the limits below (590 s, inside a lent machine's 10-minute
# command), less on an H100 or H200.
set -uo pipefail

out=${1:?usage: bash scripts/gpu_speed_check.sh OUT_DIR [RUNS_DIR]}
runs=${2:-}
py=${PYTHON:-python}  # the interpreter to run (default: python on PATH)
cd "$(dirname "$0")/.."
mkdir -p "$out"

backend=$("$py" -c 'import jax; print(jax.default_backend())') || {
  echo "gpu_speed_check: jax does not import; install the package first" >&2; exit 100; }
if [[ "$backend" != gpu && "${GPU_CHECK_ANY_BACKEND:-0}" != 1 ]]; then
  echo "gpu_speed_check: jax's backend is '$backend', not gpu (GPU_CHECK_ANY_BACKEND=1 runs it anyway)" >&2
  exit 100
fi
"$py" -c 'import jax; print(jax.__version__, jax.devices())' | tee "$out/machine.txt"
command -v nvidia-smi > /dev/null && nvidia-smi -L | tee -a "$out/machine.txt"

if [[ "${GPU_CHECK_QUICK:-0}" == 1 ]]; then
  presets=tiny; base=tiny; big=tiny; bigdtype=float32; batch=tiny; prompts=2; tokens=16
  batches=1,4; evalmax=8
else
  presets=tiny,small,base100m; base=base100m; big=gemma3_1b; bigdtype=bfloat16; batch=small
  prompts=8; tokens=64; batches=1,4,16,64; evalmax=500
fi

failed=0
bench() {  # bench NAME SECONDS ARGS...: python ARGS, its output into OUT_DIR/NAME.txt
  local name=$1 limit=$2; shift 2
  echo "== $name (at most ${limit}s): $py $*"
  timeout "$limit" "$py" "$@" > "$out/$name.txt" 2>&1
  local rc=$?
  grep '^|' "$out/$name.txt" || true
  if (( rc != 0 )); then
    echo "== $name: exit status $rc (124: out of time); the end of its output:"
    tail -n 5 "$out/$name.txt"
    failed=$((failed + 1))
  fi
}

if [[ -n "$runs" ]]; then
  bench evaluate 200 -m pasta_jax.evaluate --pasta "$runs/synth_pasta" \
    --sequential "$runs/synth_sequential" --out "$out/eval" --num_prompts "$evalmax"
fi
bench interpreter 120 scripts/bench_interpreter.py --presets "$presets" --tokens "$tokens" --runs 3
bench forced_base 90 scripts/bench_forced.py --preset "$base" --prompts "$prompts" --runs 2
bench forced_big 120 scripts/bench_forced.py --preset "$big" --dtype "$bigdtype" \
  --prompts $((prompts / 2)) --runs 2
bench batch 60 scripts/bench_batch.py --preset "$batch" --batches "$batches" --runs 2
echo "gpu_speed_check: $failed benchmark(s) failed or ran out of time; outputs in $out"
exit "$failed"
