#!/usr/bin/env bash
# Create a Cloud TPU VM or pod slice.
#
#   tpu_scripts/create.sh --name=flanrec-v4 --zone=us-central2-b --accelerator_type=v4-32 \
#       [--version=tpu-ubuntu2204-base] [--project=P] [--spot] [--dry_run]
#
# A pod slice (e.g. v4-32 = 4 workers) is one `create`; later scripts address all its workers
# with --worker=all.
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-}"
RUNTIME_VERSION="${RUNTIME_VERSION:-tpu-ubuntu2204-base}"
SPOT=0
while [[ $# -gt 0 ]]; do
  if parse_common "$@"; then shift "$SHIFT"; continue; fi
  case "$1" in
    --accelerator_type=*) ACCELERATOR_TYPE="${1#*=}" ;;
    --version=*) RUNTIME_VERSION="${1#*=}" ;;
    --spot) SPOT=1 ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) die "unknown flag $1 (see --help)" ;;
  esac
  shift
done
require_target
[[ -n "$ACCELERATOR_TYPE" ]] || die "--accelerator_type (e.g. v4-8, v5litepod-16) is required"

gcloud_target_flags
args=(gcloud compute tpus tpu-vm create "$TPU_NAME" "${GCLOUD_FLAGS[@]}"
      "--accelerator-type=$ACCELERATOR_TYPE" "--version=$RUNTIME_VERSION")
if [[ "$SPOT" == 1 ]]; then
  args+=(--spot)
fi
run "${args[@]}"
