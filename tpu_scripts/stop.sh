#!/usr/bin/env bash
# Stop a running job on every worker: SIGTERM first, so the trainer saves a checkpoint at its
# next step and exits (all workers agree on that step), SIGKILL after --timeout seconds.
#
#   tpu_scripts/stop.sh --name=flanrec-v4 --zone=us-central2-b --project=P
#       [--job=train|infer|eval] [--worker=all|N] [--timeout=300] [--force] [--dry_run]
#
# Only the job launch.sh started (its process group, from ~/flanrec_logs/JOB.pid) is
# signalled. --force sends SIGKILL at once (no checkpoint). Run it before relaunching with
# another config: a second job on the same TPU fails with "TPU in use by another process".
# shellcheck source-path=SCRIPTDIR source=_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

JOB=train
WORKER=all
TIMEOUT=300
FORCE=0
while [[ $# -gt 0 ]]; do
  if parse_common "$@"; then shift "$SHIFT"; continue; fi
  case "$1" in
    --job=*)
      # shellcheck disable=SC2034  # not unused: check_job, stop_command (_common.sh) read it
      JOB="${1#*=}" ;;
    --worker=*) WORKER="${1#*=}" ;;
    --timeout=*) TIMEOUT="${1#*=}" ;;
    --force) FORCE=1 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown flag $1 (see --help)" ;;
  esac
  shift
done
require_target
check_job
[[ "$WORKER" == all || "$WORKER" =~ ^[0-9]+$ ]] || die "--worker must be 'all' or an index"
[[ "$TIMEOUT" =~ ^[0-9]+$ ]] || die "--timeout must be a number of seconds"

signal=TERM
if [[ "$FORCE" == 1 ]]; then
  signal=KILL
fi
tpu_ssh "$WORKER" "$(stop_command "$signal" "$TIMEOUT")"
