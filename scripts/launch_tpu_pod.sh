#!/usr/bin/env bash
# Runs a training command on every worker of a Cloud TPU pod slice at once.
#
#   scripts/launch_tpu_pod.sh --tpu NAME --zone ZONE [--project P] [--dir DIR] [--install] \
#       [--dry_run] -- python -m pasta_jax.train --config configs/gemma_sft.py:7b \
#       --workdir /mnt/shared/runs/gemma7b_pasta --config.tokenizer.path=... ...
#
# Each worker runs the command in DIR (the repository's checkout on the workers,
# default: pasta_jax in the home directory) with PASTA_DISTRIBUTED=1, so that
# pasta_jax.train calls jax.distributed.initialize() (on Cloud TPU it finds the
# coordinator and the process ids by itself). Every worker reads its own share of
# the batch; only process 0 prints and writes logs. The workdir, the data_dir and
# the files the config names must be visible to every worker at the same path
# (a shared filesystem, e.g. a gcsfuse or Filestore mount): orbax writes each
# checkpoint from all hosts into one directory. docs/multihost.md has the rest
# (other clusters, a local two-process test).
#
# --install first runs `pip install -e . && pip install -U "jax[tpu]"` in DIR.
# --dry_run prints the gcloud command instead of running it.
set -euo pipefail

tpu='' zone='' project='' dir='pasta_jax' install=0 dry_run=0
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit "${1:-2}"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --tpu) tpu="$2"; shift 2 ;;
    --zone) zone="$2"; shift 2 ;;
    --project) project="$2"; shift 2 ;;
    --dir) dir="$2"; shift 2 ;;
    --install) install=1; shift ;;
    --dry_run) dry_run=1; shift ;;
    -h|--help) usage 0 ;;
    --) shift; break ;;
    *) echo "launch_tpu_pod.sh: unknown option $1" >&2; usage ;;
  esac
done
if [ -z "$tpu" ] || [ -z "$zone" ] || [ $# -eq 0 ]; then
  echo "launch_tpu_pod.sh: need --tpu, --zone and a command after --" >&2
  usage
fi

command=$(printf '%q ' "$@")
remote="cd $(printf '%q' "$dir")"
if [ "$install" -eq 1 ]; then
  remote+=' && pip install -e . && pip install -U "jax[tpu]"'
fi
remote+=" && PASTA_DISTRIBUTED=1 ${command% }"

gcloud_args=(compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command "$remote")
if [ -n "$project" ]; then
  gcloud_args+=(--project "$project")
fi
if [ "$dry_run" -eq 1 ]; then
  printf '%q ' gcloud "${gcloud_args[@]}"
  echo
else
  exec gcloud "${gcloud_args[@]}"
fi
