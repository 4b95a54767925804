#!/usr/bin/env bash
# Delete a TPU VM / pod slice (stops billing; MODEL_DIR on GCS is kept).
#
#   tpu_scripts/delete.sh --name=flanrec-v4 --zone=us-central2-b [--project=P] [--dry_run]
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

while [[ $# -gt 0 ]]; do
  if parse_common "$@"; then shift "$SHIFT"; continue; fi
  case "$1" in
    -h|--help) sed -n '2,5p' "$0"; exit 0 ;;
    *) die "unknown flag $1 (see --help)" ;;
  esac
  shift
done
require_target
gcloud_target_flags
run gcloud compute tpus tpu-vm delete "$TPU_NAME" "${GCLOUD_FLAGS[@]}" --quiet
