#!/usr/bin/env bash
# Show (and follow) the training log of a worker.
#
#   tpu_scripts/logs.sh --name=flanrec-v4 --zone=us-central2-b [--worker=0|all]
#       [--lines=100] [--no_follow] [--dry_run]
#
# Worker 0 is the primary host: it writes metrics and the checkpoint meta.
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

WORKER=0
LINES=100
FOLLOW=1
while [[ $# -gt 0 ]]; do
  if parse_common "$@"; then shift "$SHIFT"; continue; fi
  case "$1" in
    --worker=*) WORKER="${1#*=}" ;;
    --lines=*) LINES="${1#*=}" ;;
    --no_follow) FOLLOW=0 ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
    *) die "unknown flag $1 (see --help)" ;;
  esac
  shift
done
require_target
[[ "$WORKER" == all || "$WORKER" =~ ^[0-9]+$ ]] || die "--worker must be 'all' or an index"
[[ "$LINES" =~ ^[0-9]+$ ]] || die "--lines must be a number"

follow=""
if [[ "$FOLLOW" == 1 ]]; then
  follow=" -f"
fi
tpu_ssh "$WORKER" "tail -n $LINES$follow ~/$LOG_FILE"
