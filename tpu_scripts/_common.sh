# Shared helpers for the tpu_scripts/*.sh entry points (sourced, not run).
#
# Every gcloud/tar command goes through `run`, so `--dry_run` prints the exact command lines
# (one per line, shell-quoted, ready to paste) and runs nothing. Settings come from flags, with
# environment fallbacks so one `export TPU_NAME=... ZONE=...` serves all the scripts.

set -euo pipefail

DRY_RUN=0
TPU_NAME="${TPU_NAME:-}"
ZONE="${ZONE:-}"
PROJECT="${PROJECT:-}"
REMOTE_DIR="${REMOTE_DIR:-flanrec}"           # relative to $HOME on every worker
LOG_FILE="${LOG_FILE:-flanrec_train.log}"     # relative to $HOME on every worker

die() {
  echo "error: $*" >&2
  exit 2
}

# shquote WORD: WORD as the shell reads it back (single quotes only where needed), so the
# printed commands are both readable and safe to paste.
shquote() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# run CMD ARGS...: print the command (always), execute it unless --dry_run.
run() {
  local line="" word
  for word in "$@"; do
    line+="${line:+ }$(shquote "$word")"
  done
  if [[ "$DRY_RUN" == 1 ]]; then
    echo "$line"
  else
    echo "+ $line" >&2
    "$@"
  fi
}

# parse_common FLAG: consume one of the flags every script shares; returns 1 if not one.
# Usage inside a `while` loop over "$@"; sets SHIFT to how many words were used.
parse_common() {
  SHIFT=1
  case "$1" in
    --dry_run) DRY_RUN=1 ;;
    --name=*) TPU_NAME="${1#*=}" ;;
    --zone=*) ZONE="${1#*=}" ;;
    --project=*) PROJECT="${1#*=}" ;;
    --remote_dir=*) REMOTE_DIR="${1#*=}" ;;
    --log_file=*) LOG_FILE="${1#*=}" ;;
    --name|--zone|--project|--remote_dir|--log_file)
      [[ $# -ge 2 ]] || die "$1 needs a value"
      SHIFT=2
      parse_common "$1=$2"
      SHIFT=2
      ;;
    *) return 1 ;;
  esac
}

require_target() {
  [[ -n "$TPU_NAME" ]] || die "--name (or TPU_NAME) is required"
  [[ -n "$ZONE" ]] || die "--zone (or ZONE) is required"
  if [[ "$DRY_RUN" != 1 ]] && ! command -v gcloud > /dev/null; then
    die "gcloud not found: install the Google Cloud CLI (or use --dry_run to see the commands)"
  fi
}

# Flags appended to every `gcloud compute tpus tpu-vm` command.
gcloud_target_flags() {
  GCLOUD_FLAGS=("--zone=$ZONE")
  if [[ -n "$PROJECT" ]]; then
    GCLOUD_FLAGS+=("--project=$PROJECT")
  fi
}

# tpu_ssh WORKER COMMAND: run COMMAND on worker(s) WORKER ("all" or an index).
tpu_ssh() {
  gcloud_target_flags
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${GCLOUD_FLAGS[@]}" "--worker=$1" \
    "--command=$2"
}
