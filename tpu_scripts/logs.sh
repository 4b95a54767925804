#!/usr/bin/env bash
# Show (and follow) a job's log on one worker or all of them.
#
#   tpu_scripts/logs.sh --name=flanrec-v4 --zone=us-central2-b --project=P
#       [--job=train|infer|eval] [--worker=0|all] [--lines=100] [--no_follow] [--dry_run]
#
# Every worker keeps its own log (~/flanrec_logs/JOB.log); with --worker=all each line is
# prefixed with the worker's hostname. Worker 0 is the primary host: it writes the metrics
# and checkpoint metadata, so its log is the one to read first.
# shellcheck source-path=SCRIPTDIR source=_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

JOB=train
WORKER=0
LINES=100
FOLLOW=1
while [[ $# -gt 0 ]]; do
  if parse_common "$@"; then shift "$SHIFT"; continue; fi
  case "$1" in
    --job=*) JOB="${1#*=}" ;;
    --worker=*) WORKER="${1#*=}" ;;
    --lines=*) LINES="${1#*=}" ;;
    --no_follow) FOLLOW=0 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown flag $1 (see --help)" ;;
  esac
  shift
done
require_target
check_job
[[ "$WORKER" == all || "$WORKER" =~ ^[0-9]+$ ]] || die "--worker must be 'all' or an index"
[[ "$LINES" =~ ^[0-9]+$ ]] || die "--lines must be a number"

cmd="tail -n $LINES"
if [[ "$FOLLOW" == 1 ]]; then
  cmd+=" -F"
fi
cmd+=" \$HOME/$LOG_DIR/$JOB.log"
if [[ "$WORKER" == all ]]; then
  cmd+=" | sed -u \"s/^/\$(hostname): /\""
fi
tpu_ssh "$WORKER" "$cmd"
