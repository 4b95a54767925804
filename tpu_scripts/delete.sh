#!/usr/bin/env bash
# Delete a TPU VM / pod slice (stops billing; MODEL_DIR on GCS is kept).
#
#   tpu_scripts/delete.sh --name=flanrec-v4 --zone=us-central2-b --project=P \
#       [--queued [--qr_name=ID]] [--dry_run]
#
# With --queued the queued resource is deleted together with its node (--force).
# shellcheck source-path=SCRIPTDIR source=_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

while [[ $# -gt 0 ]]; do
  if parse_common "$@"; then shift "$SHIFT"; continue; fi
  case "$1" in
    -h|--help) usage; exit 0 ;;
    *) die "unknown flag $1 (see --help)" ;;
  esac
done
require_target
delete_node
