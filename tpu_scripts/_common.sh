# Shared helpers for the tpu_scripts/*.sh entry points (sourced, not run).
#
# Every command that changes something goes through `run`, so `--dry_run` prints the exact
# command lines (one per line, shell-quoted, ready to paste) and runs nothing. Read-only
# queries (`describe`, a job's exit file) go through `query`: they run even under --dry_run,
# because the restart loop cannot decide anything without them. Settings come from flags,
# with environment fallbacks so one `export TPU_NAME=... ZONE=... PROJECT=...` serves all
# the scripts.
#
# shellcheck shell=bash
# shellcheck disable=SC2034  # the ACC_*, SHIFT, ... variables set here are read by the callers

set -euo pipefail
shopt -s inherit_errexit  # a failure inside $(...) fails the caller too (bash >= 4.4)

TPU_SCRIPTS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$TPU_SCRIPTS/.." && pwd)"

DRY_RUN=0
TPU_NAME="${TPU_NAME:-}"
ZONE="${ZONE:-}"
PROJECT="${PROJECT:-${CLOUDSDK_CORE_PROJECT:-}}"
REMOTE_DIR="${REMOTE_DIR:-flanrec}"           # the code, relative to $HOME on every worker
REMOTE_VENV="${REMOTE_VENV:-flanrec-venv}"    # the Python environment, relative to $HOME
LOG_DIR="${LOG_DIR:-flanrec_logs}"            # JOB.log / JOB.pid / JOB.exit, relative to $HOME
QUEUED=0                                      # the node belongs to a queued resource
QR_NAME="${QR_NAME:-}"                        # its id; default "$TPU_NAME-qr"

# usage: the comment block at the top of the calling script, without the `#`s.
usage() {
  awk 'NR > 1 && /^# shellcheck/ { exit } NR > 1 && /^#/ { sub(/^# ?/, ""); print; next }
       NR > 1 { exit }' "$0"
}

die() {
  echo "error: $*" >&2
  exit 2
}

note() {
  echo "[tpu_scripts] $*" >&2
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

# shjoin WORDS...: the words as one shell-quoted line.
shjoin() {
  local line="" word
  for word in "$@"; do
    line+="${line:+ }$(shquote "$word")"
  done
  printf '%s' "$line"
}

# run CMD ARGS...: print the command (always), execute it unless --dry_run.
run() {
  if [[ "$DRY_RUN" == 1 ]]; then
    shjoin "$@"
    echo
  else
    echo "+ $(shjoin "$@")" >&2
    "$@"
  fi
}

# query CMD ARGS...: a read-only command; runs even under --dry_run (stdout is its answer).
query() {
  "$@"
}

# parse_common ARGS...: consume one flag every script shares; returns 1 if not one.
# Usage inside a `while` loop over "$@"; sets SHIFT to how many words were used.
parse_common() {
  SHIFT=1
  case "$1" in
    --dry_run) DRY_RUN=1 ;;
    --name=*) TPU_NAME="${1#*=}" ;;
    --zone=*) ZONE="${1#*=}" ;;
    --project=*) PROJECT="${1#*=}" ;;
    --remote_dir=*) REMOTE_DIR="${1#*=}" ;;
    --remote_venv=*) REMOTE_VENV="${1#*=}" ;;
    --log_dir=*) LOG_DIR="${1#*=}" ;;
    --queued) QUEUED=1 ;;
    --qr_name=*) QR_NAME="${1#*=}"; QUEUED=1 ;;
    --name|--zone|--project|--remote_dir|--remote_venv|--log_dir|--qr_name)
      [[ $# -ge 2 ]] || die "$1 needs a value"
      parse_common "$1=$2"
      SHIFT=2
      ;;
    *) return 1 ;;
  esac
}

# A path under $HOME on the workers: written as $HOME/PATH unquoted so the remote shell
# expands it, hence restricted to characters that need no quoting.
check_home_path() {
  local flag="$1" value="$2"
  [[ "$value" =~ ^[A-Za-z0-9_][A-Za-z0-9_./-]*$ && "$value" != *..* ]] \
    || die "$flag must be a plain path relative to \$HOME on the workers (got '$value')"
}

require_target() {
  [[ -n "$TPU_NAME" ]] || die "--name (or TPU_NAME) is required"
  [[ "$TPU_NAME" =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] \
    || die "--name '$TPU_NAME' is not a valid TPU name (lowercase letters, digits, '-')"
  [[ -n "$ZONE" ]] || die "--zone (or ZONE) is required, e.g. us-central2-b"
  [[ -n "$PROJECT" ]] || die "--project (or PROJECT) is required: the Google Cloud project id"
  check_home_path --remote_dir "$REMOTE_DIR"
  check_home_path --remote_venv "$REMOTE_VENV"
  check_home_path --log_dir "$LOG_DIR"
  QR_NAME="${QR_NAME:-$TPU_NAME-qr}"
  if [[ "$DRY_RUN" != 1 ]] && ! command -v gcloud > /dev/null; then
    die "gcloud not found: install the Google Cloud CLI (or use --dry_run to see the commands)"
  fi
}

# Flags appended to every `gcloud compute tpus ...` command.
gcloud_target_flags() {
  GCLOUD_FLAGS=("--zone=$ZONE" "--project=$PROJECT")
}

# tpu_ssh WORKER COMMAND: run COMMAND on worker(s) WORKER ("all" or an index).
tpu_ssh() {
  gcloud_target_flags
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${GCLOUD_FLAGS[@]}" "--worker=$1" \
    "--command=$2"
}

# tpu_ssh_query WORKER COMMAND: as tpu_ssh, but read-only (runs under --dry_run too).
tpu_ssh_query() {
  gcloud_target_flags
  query gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${GCLOUD_FLAGS[@]}" "--worker=$1" \
    "--command=$2"
}

# ------------------------------------------------------------------ accelerator types
# accelerator_info TYPE: sets ACC_GEN, ACC_DEVICES (JAX devices), ACC_HOSTS, ACC_HBM_GIB
# (per JAX device) and ACC_RUNTIME (the runtime image Google lists for JAX on it).
# Returns 1 for a type not in the table. Sizes: cloud.google.com/tpu/docs (v2/v3/v4/v5p:
# NAME-N counts TensorCores, 2 per chip; v5e/v6e: N counts chips). A v2/v3 core is one JAX
# device; a v4/v5p chip (megacore) is one.
ACCELERATOR_SIZES_V2="8 32 128 256 512"
ACCELERATOR_SIZES_V3="8 32 64 128 256 512 1024 2048"
ACCELERATOR_SIZES_V4="8 16 32 64 128 256 512 1024 1536 2048 3072 4096"
ACCELERATOR_SIZES_V5E="1 4 8 16 32 64 128 256"
ACCELERATOR_SIZES_V5P="8 16 32 64 128 256 384 512 768 1024 1536 2048 3072 4096 6144 8192 12288"
ACCELERATOR_SIZES_V6E="1 4 8 16 32 64 128 256"

accelerator_info() {
  local type="$1" gen size sizes
  gen="${type%-*}"
  size="${type##*-}"
  [[ "$type" == *-* && "$size" =~ ^[0-9]+$ ]] || return 1
  case "$gen" in
    v2) sizes="$ACCELERATOR_SIZES_V2" ;;
    v3) sizes="$ACCELERATOR_SIZES_V3" ;;
    v4) sizes="$ACCELERATOR_SIZES_V4" ;;
    v5litepod) sizes="$ACCELERATOR_SIZES_V5E" ;;
    v5p) sizes="$ACCELERATOR_SIZES_V5P" ;;
    v6e) sizes="$ACCELERATOR_SIZES_V6E" ;;
    *) return 1 ;;
  esac
  [[ " $sizes " == *" $size "* ]] || return 1
  ACC_GEN="$gen"
  case "$gen" in
    v2|v3)
      ACC_DEVICES="$size"; ACC_HOSTS=$((size / 8))
      ACC_HBM_GIB=$([[ "$gen" == v2 ]] && echo 8 || echo 16)
      ACC_RUNTIME=tpu-ubuntu2204-base ;;
    v4|v5p)
      ACC_DEVICES=$((size / 2)); ACC_HOSTS=$(( size > 8 ? size / 8 : 1 ))
      ACC_HBM_GIB=$([[ "$gen" == v4 ]] && echo 32 || echo 95)
      ACC_RUNTIME=$([[ "$gen" == v4 ]] && echo tpu-ubuntu2204-base || echo v2-alpha-tpuv5) ;;
    v5litepod|v6e)
      ACC_DEVICES="$size"; ACC_HOSTS=$(( size > 8 ? size / 4 : 1 ))
      ACC_HBM_GIB=$([[ "$gen" == v6e ]] && echo 32 || echo 16)
      ACC_RUNTIME=$([[ "$gen" == v6e ]] && echo v2-alpha-tpuv6e || echo v2-alpha-tpuv5-lite) ;;
  esac
}

known_accelerators() {
  local s out=""
  for s in $ACCELERATOR_SIZES_V4; do out+=" v4-$s"; done
  for s in $ACCELERATOR_SIZES_V5E; do out+=" v5litepod-$s"; done
  for s in $ACCELERATOR_SIZES_V5P; do out+=" v5p-$s"; done
  for s in $ACCELERATOR_SIZES_V6E; do out+=" v6e-$s"; done
  for s in $ACCELERATOR_SIZES_V3; do out+=" v3-$s"; done
  for s in $ACCELERATOR_SIZES_V2; do out+=" v2-$s"; done
  echo "${out# }"
}

# check_runtime GEN VERSION: refuse the runtime images known to belong to another generation
# (the classic "TPU not found / libtpu version mismatch" after a successful create).
check_runtime() {
  local gen="$1" version="$2" want
  case "$version" in
    v2-alpha-tpuv5-lite) want=v5litepod ;;
    v2-alpha-tpuv5) want=v5p ;;
    v2-alpha-tpuv6e) want=v6e ;;
    tpu-ubuntu2204-base|tpu-vm-base|tpu-vm-v4-base|v2-alpha-tpuv4|tpu-vm-tf-*|tpu-vm-pt-*)
      want="v2 v3 v4" ;;
    *) note "runtime version '$version' is not one tpu_scripts knows; passing it through"
       return 0 ;;
  esac
  [[ " $want " == *" $gen "* ]] || die "--version $version is a runtime image for $want, not \
for $gen TPUs; leave --version out to get $gen's default ($ACC_RUNTIME)"
}

# ---------------------------------------------------------------- create / delete / state
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-}"
RUNTIME_VERSION="${RUNTIME_VERSION:-}"
PROVISIONING=standard                          # standard | spot | preemptible
VALID_UNTIL=""                                 # queued resources: give up after this long

# parse_create ARGS...: the flags that describe the node to create; returns 1 if not one.
parse_create() {
  SHIFT=1
  case "$1" in
    --accelerator_type=*) ACCELERATOR_TYPE="${1#*=}" ;;
    --version=*) RUNTIME_VERSION="${1#*=}" ;;
    --spot) PROVISIONING=spot ;;
    --preemptible) PROVISIONING=preemptible ;;
    --valid_until_duration=*) VALID_UNTIL="${1#*=}"; QUEUED=1 ;;
    --accelerator_type|--version|--valid_until_duration)
      [[ $# -ge 2 ]] || die "$1 needs a value"
      parse_create "$1=$2"
      SHIFT=2
      ;;
    *) return 1 ;;
  esac
}

require_accelerator() {
  [[ -n "$ACCELERATOR_TYPE" ]] \
    || die "--accelerator_type is required (e.g. v4-8, v4-32, v5litepod-16, v5p-32)"
  accelerator_info "$ACCELERATOR_TYPE" || die "--accelerator_type '$ACCELERATOR_TYPE' is not \
a known TPU type; known: $(known_accelerators)"
  if [[ -z "$RUNTIME_VERSION" ]]; then
    RUNTIME_VERSION="$ACC_RUNTIME"
  else
    check_runtime "$ACC_GEN" "$RUNTIME_VERSION"
  fi
  if [[ "$QUEUED" == 1 && "$PROVISIONING" == preemptible ]]; then
    die "--preemptible is not offered for queued resources; use --spot"
  fi
}

create_node() {
  gcloud_target_flags
  local args
  if [[ "$QUEUED" == 1 ]]; then
    args=(gcloud compute tpus queued-resources create "$QR_NAME" "--node-id=$TPU_NAME"
          "${GCLOUD_FLAGS[@]}" "--accelerator-type=$ACCELERATOR_TYPE"
          "--runtime-version=$RUNTIME_VERSION")
    if [[ -n "$VALID_UNTIL" ]]; then
      args+=("--valid-until-duration=$VALID_UNTIL")
    fi
  else
    args=(gcloud compute tpus tpu-vm create "$TPU_NAME" "${GCLOUD_FLAGS[@]}"
          "--accelerator-type=$ACCELERATOR_TYPE" "--version=$RUNTIME_VERSION")
  fi
  case "$PROVISIONING" in
    spot) args+=(--spot) ;;
    preemptible) args+=(--preemptible) ;;
  esac
  run "${args[@]}"
}

delete_node() {
  gcloud_target_flags
  if [[ "$QUEUED" == 1 ]]; then
    # --force deletes the node with its queued resource.
    run gcloud compute tpus queued-resources delete "$QR_NAME" "${GCLOUD_FLAGS[@]}" --force \
      --quiet
  else
    run gcloud compute tpus tpu-vm delete "$TPU_NAME" "${GCLOUD_FLAGS[@]}" --quiet
  fi
}

# describe_state KIND NAME: the `state` of a TPU VM (KIND=tpu-vm) or a queued resource
# (KIND=queued-resources), or NOT_FOUND. Any other gcloud failure stops the script: a
# missing login must not be mistaken for a preempted slice.
describe_state() {
  local kind="$1" name="$2" field=state out err rc=0
  [[ "$kind" == queued-resources ]] && field=state.state
  gcloud_target_flags
  err="$(mktemp)"
  out="$(query gcloud compute tpus "$kind" describe "$name" "${GCLOUD_FLAGS[@]}" \
         "--format=value($field)" 2> "$err")" || rc=$?
  if [[ "$rc" != 0 ]]; then
    if grep -qiE 'NOT_FOUND|not found' "$err"; then
      rm -f "$err"
      echo NOT_FOUND
      return 0
    fi
    cat "$err" >&2
    rm -f "$err"
    die "gcloud compute tpus $kind describe $name failed (exit $rc)"
  fi
  rm -f "$err"
  out="$(printf '%s\n' "$out" | tail -n 1)"
  echo "${out:-UNKNOWN}"
}

# node_state: READY, GONE (preempted, terminated, suspended, failed or missing: only a new
# node helps) or WAIT (creating, queued, restarting, repairing...).
node_state() {
  local s
  if [[ "$QUEUED" == 1 ]]; then
    s="$(describe_state queued-resources "$QR_NAME")" || exit $?
    case "$s" in
      ACTIVE) ;;
      NOT_FOUND|SUSPENDING|SUSPENDED|FAILED|DELETING) echo "GONE $s"; return ;;
      *) echo "WAIT $s"; return ;;
    esac
  fi
  s="$(describe_state tpu-vm "$TPU_NAME")" || exit $?
  case "$s" in
    READY) echo "READY $s" ;;
    NOT_FOUND|PREEMPTED|TERMINATED|STOPPED|DELETING|HIDDEN) echo "GONE $s" ;;
    *) echo "WAIT $s" ;;
  esac
}

# ------------------------------------------------------------------------------ setup
SOURCE=local            # local (this checkout, packed) | git | wheel
GIT_URL=""
GIT_REF=""
WHEEL=""
JAX_SPEC="${JAX_SPEC:-jax[tpu]}"
REMOTE_PYTHON="${REMOTE_PYTHON:-python3.11}"   # flanrec needs >= 3.11; Ubuntu 22.04 has 3.10
TARBALL="${TARBALL:-${TMPDIR:-/tmp}/flanrec-src.tgz}"
CHECKPOINTS=()          # gs:// dirs copied to checkpoints/PARENT/NAME in the code dir
ONLY_CHECKPOINTS=0      # copy the checkpoints to an installed slice, install nothing

parse_setup() {
  SHIFT=1
  case "$1" in
    --git_url=*) GIT_URL="${1#*=}"; SOURCE=git ;;
    --git_ref=*) GIT_REF="${1#*=}"; SOURCE=git ;;
    --wheel=*) WHEEL="${1#*=}"; SOURCE=wheel ;;
    --jax=*) JAX_SPEC="${1#*=}" ;;
    --python=*) REMOTE_PYTHON="${1#*=}" ;;
    --tarball=*) TARBALL="${1#*=}" ;;
    --checkpoint=*) CHECKPOINTS+=("${1#*=}") ;;
    --only_checkpoints) ONLY_CHECKPOINTS=1 ;;
    --git_url|--git_ref|--wheel|--jax|--python|--tarball|--checkpoint)
      [[ $# -ge 2 ]] || die "$1 needs a value"
      parse_setup "$1=$2"
      SHIFT=2
      ;;
    *) return 1 ;;
  esac
}

check_setup_args() {
  [[ "$REMOTE_PYTHON" =~ ^python3(\.[0-9]+)?$ ]] \
    || die "--python must name an interpreter like python3.11 (got '$REMOTE_PYTHON')"
  case "$SOURCE" in
    git)
      [[ -n "$GIT_URL" ]] || die "--git_ref needs --git_url (the repository the workers clone)"
      GIT_REF="${GIT_REF:-main}" ;;
    wheel)
      [[ -f "$WHEEL" && "$WHEEL" == *.whl ]] || die "--wheel $WHEEL: no such .whl file" ;;
  esac
  if [[ "$ONLY_CHECKPOINTS" == 1 && ${#CHECKPOINTS[@]} == 0 ]]; then
    die "--only_checkpoints needs at least one --checkpoint=gs://..."
  fi
  local c
  for c in ${CHECKPOINTS[@]+"${CHECKPOINTS[@]}"}; do
    [[ "$c" =~ ^gs://[^/]+/(.+/)?[^/]+/[^/]+/?$ ]] || die "--checkpoint $c: expected \
gs://BUCKET/.../PARENT/NAME (copied to checkpoints/PARENT/NAME on every worker)"
  done
}

# checkpoint_dest SRC: where --checkpoint SRC lands, relative to the code dir.
checkpoint_dest() {
  local src="${1%/}"
  echo "checkpoints/$(basename "$(dirname "$src")")/$(basename "$src")"
}

# setup_workers: install flanrec + jax[tpu] in ~/$REMOTE_VENV on every worker.
setup_workers() {
  gcloud_target_flags
  local py="\$HOME/$REMOTE_VENV/bin/python" code_dir="\$HOME/$REMOTE_DIR" remote wheel_name c dest
  if [[ "$ONLY_CHECKPOINTS" == 1 ]]; then
    remote="set -e; test -d $code_dir"
    for c in "${CHECKPOINTS[@]}"; do
      dest="$(checkpoint_dest "$c")"
      remote+=" && mkdir -p $code_dir/$(dirname "$dest")"
      remote+=" && gsutil -m -q cp -r $(shquote "${c%/}") $code_dir/$(dirname "$dest")/"
    done
    remote+=" && ls -d $code_dir/checkpoints/*/*"
    tpu_ssh all "$remote"
    return
  fi
  # Everything but the source step is the same for the three sources.
  remote="set -e; if ! command -v $REMOTE_PYTHON > /dev/null; then"
  remote+=" sudo apt-get update -q && sudo apt-get install -y -q $REMOTE_PYTHON"
  remote+=" $REMOTE_PYTHON-venv; fi"
  remote+=" && { test -x $py || $REMOTE_PYTHON -m venv \$HOME/$REMOTE_VENV; }"
  remote+=" && $py -m pip install -q -U pip"
  case "$SOURCE" in
    local)
      run tar -czf "$TARBALL" --exclude=.venv --exclude=.venv-cache --exclude=.git \
        --exclude=__pycache__ --exclude=.pytest_cache --exclude=.ruff_cache --exclude=.hypothesis --exclude=./data \
        --exclude=./runs --exclude=./checkpoints -C "$REPO" .
      run gcloud compute tpus tpu-vm scp "$TARBALL" "$TPU_NAME:flanrec-src.tgz" \
        "${GCLOUD_FLAGS[@]}" --worker=all
      remote+=" && rm -rf $code_dir && mkdir -p $code_dir"
      remote+=" && tar -xzf \$HOME/flanrec-src.tgz -C $code_dir"
      remote+=" && $py -m pip install -q -e $code_dir $(shquote "$JAX_SPEC")"
      ;;
    git)
      remote+=" && rm -rf $code_dir && git clone -q $(shquote "$GIT_URL") $code_dir"
      remote+=" && git -C $code_dir checkout -q $(shquote "$GIT_REF")"
      remote+=" && $py -m pip install -q -e $code_dir $(shquote "$JAX_SPEC")"
      ;;
    wheel)
      # The wheel has the library; gin/ (the configs the jobs name) travels beside it.
      wheel_name="$(basename "$WHEEL")"
      run tar -czf "$TARBALL" -C "$REPO" gin
      run gcloud compute tpus tpu-vm scp "$WHEEL" "$TARBALL" "$TPU_NAME:" \
        "${GCLOUD_FLAGS[@]}" --worker=all
      remote+=" && rm -rf $code_dir && mkdir -p $code_dir"
      remote+=" && tar -xzf \$HOME/$(basename "$TARBALL") -C $code_dir"
      remote+=" && $py -m pip install -q \$HOME/$(shquote "$wheel_name") $(shquote "$JAX_SPEC")"
      ;;
  esac
  # Initial checkpoints: on each worker's disk, because flanrec reads them from local paths
  # (T5X and HF checkpoints are not read from GCS directly).
  for c in ${CHECKPOINTS[@]+"${CHECKPOINTS[@]}"}; do
    dest="$(checkpoint_dest "$c")"
    remote+=" && mkdir -p $code_dir/$(dirname "$dest")"
    remote+=" && gsutil -m -q cp -r $(shquote "${c%/}") $code_dir/$(dirname "$dest")/"
  done
  # Shows the TPU devices of each worker: an empty list here is a runtime/libtpu problem,
  # found before any job is launched.
  remote+=" && cd $code_dir && timeout 300 $py -c"
  remote+=" $(shquote 'import socket, jax, flanrec; print(socket.gethostname(), "jax", jax.__version__, jax.local_devices())')"
  tpu_ssh all "$remote"
}

# --------------------------------------------------------------------------- jobs
# Each job JOB (train | infer | eval) keeps three files in ~/$LOG_DIR on each worker:
# JOB.log (its stdout+stderr), JOB.pid (process group of the detached job) and JOB.exit
# (its exit status, written when it ends). The restart loop, logs.sh and stop.sh read them.
JOB=""

check_job() {
  case "$JOB" in
    train|infer|eval) ;;
    "") die "which job? give train, infer or eval as the first argument" ;;
    *) die "unknown job '$JOB': expected train, infer or eval" ;;
  esac
}

# job_status_command: prints RUNNING, RESUMABLE (ended after SIGTERM with a checkpoint, e.g.
# a maintenance event: relaunch to resume), "EXIT N" or LOST (no exit status and no process:
# the VM restarted under it).
job_status_command() {
  local j="\$HOME/$LOG_DIR/$JOB"
  printf '%s' "if [ -f $j.exit ]; then s=\$(cat $j.exit);"
  printf '%s' " if [ \"\$s\" = 0 ] && grep -q 'rerun the same command to resume' $j.log;"
  printf '%s' " then echo RESUMABLE; else echo \"EXIT \$s\"; fi;"
  printf '%s' " elif [ -f $j.pid ] && kill -0 \"\$(cat $j.pid)\" 2> /dev/null;"
  printf '%s' " then echo RUNNING; else echo LOST; fi"
}

# stop_command SIGNAL TIMEOUT: a worker's shell command that sends SIGNAL to the job's
# process group, waits up to TIMEOUT seconds for it to end, then SIGKILLs what is left.
stop_command() {
  local j="\$HOME/$LOG_DIR/$JOB" signal="$1" timeout="$2" cmd
  cmd="if [ -f $j.pid ] && kill -0 \"\$(cat $j.pid)\" 2> /dev/null; then p=\$(cat $j.pid);"
  cmd+=" kill -$signal -- -\$p; i=0; while kill -0 \$p 2> /dev/null && [ \$i -lt $timeout ];"
  cmd+=" do sleep 1; i=\$((i + 1)); done; if kill -0 \$p 2> /dev/null; then kill -KILL -- -\$p;"
  cmd+=" echo \"\$(hostname): $JOB killed after ${timeout}s\"; else"
  cmd+=" echo \"\$(hostname): $JOB stopped, exit \$(cat $j.exit 2> /dev/null)\"; fi;"
  cmd+=" else echo \"\$(hostname): no running $JOB job\"; fi"
  printf '%s' "$cmd"
}
