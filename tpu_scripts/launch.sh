#!/usr/bin/env bash
# Launch a gin-configured flanrec training job on every worker of a TPU VM / pod slice.
#
#   tpu_scripts/launch.sh --name=flanrec-v4 --zone=us-central2-b \
#       --gin_file=gin/models/flan_t5_base.gin --gin_file=gin/runs/finetune.gin \
#       --gin.MODEL_DIR=gs://bucket/runs/ml100k --gin.MIXTURE_OR_TASK_NAME=ml100k_seq_rec \
#       [--module=flanrec.train] [--dry_run]
#
# All --gin_file / --gin.X=V flags are passed through unchanged. The job runs detached
# (nohup) on all workers at once, which is what a multi-host JAX program needs; output goes
# to ~/$LOG_FILE on each worker (see logs.sh). MODEL_DIR should be on GCS for pod slices.
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

MODULE="${MODULE:-flanrec.train}"
DISTRIBUTED=1
job_args=()
while [[ $# -gt 0 ]]; do
  if parse_common "$@"; then shift "$SHIFT"; continue; fi
  case "$1" in
    --gin_file=*|--gin.*=*) job_args+=("$1") ;;
    --module=*) MODULE="${1#*=}" ;;
    --no_distributed) DISTRIBUTED=0 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) die "unknown flag $1 (gin flags are --gin_file=F and --gin.NAME=VALUE)" ;;
  esac
  shift
done
require_target
[[ ${#job_args[@]} -gt 0 ]] || die "no --gin_file/--gin.X=V given: nothing to configure the job"
if [[ "$DISTRIBUTED" == 1 ]]; then
  job_args+=(--distributed)
fi

job="python3 -m $MODULE"
for arg in "${job_args[@]}"; do
  job+=" $(shquote "$arg")"
done
tpu_ssh all "cd ~/$REMOTE_DIR && nohup $job > ~/$LOG_FILE 2>&1 < /dev/null &"
