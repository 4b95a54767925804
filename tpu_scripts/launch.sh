#!/usr/bin/env bash
# Launch a gin-configured flanrec job (train | infer | eval) on the workers of a TPU slice.
#
#   tpu_scripts/launch.sh train --name=flanrec-v4 --zone=us-central2-b --project=P \
#       --gin_file=gin/experiments/flan_t5_base_ml1m_v4_8.gin \
#       --gin.MODEL_DIR=gs://bucket/runs/ml1m_base \
#       --env=FLANREC_DATA_DIR=gs://bucket/prepared/ml-1m [--dry_run]
#
# train and infer run on all workers at once (--worker=all), which a multi-host JAX program
# needs, with --distributed (jax.distributed.initialize() finds the other workers itself);
# eval reads the inference output and runs on worker 0 (--worker=N to change). The job is
# detached (setsid) on each worker; its output goes to ~/flanrec_logs/JOB.log on that worker
# (logs.sh), its exit status to JOB.exit; stop.sh ends it. --gin_file / --gin.NAME=VALUE /
# --gin_bindings / --gin_search_paths pass through unchanged, quotes and spaces included;
# gin files must exist in this checkout (setup.sh copies it to the workers). --env=NAME=VALUE
# exports a variable for the job (the workers do not see your local environment).
#
# Resuming after preemption (spot / preemptible slices):
#   --restart_on_preemption [--on_preemption=recreate|wait] [--poll_seconds=60]
#   [--max_restarts=20] plus create.sh's flags (--accelerator_type, --spot, --queued, ...)
#   and setup.sh's. Polls the slice (or queued resource) state and the job on worker 0: when
#   the slice is PREEMPTED / TERMINATED / SUSPENDED / gone it is deleted and recreated (or,
#   with wait, waited for), set up again and the job relaunched; the trainer resumes from the
#   latest complete checkpoint in MODEL_DIR. Ends when the job exits 0, stops on a job
#   failure that is not a preemption. Without --accelerator_type the slice is recreated as
#   it is now (type, runtime, spot/preemptible read from it once at the start). --dry_run
#   runs no gcloud at all: it prints the poll, launch, recreate and setup commands.
#
# Rehearsing a multi-host launch on one machine:
#   --local_sim=N [--local_sim_dir=DIR] [--local_sim_devices=2] [--local_venv=DIR]
#   runs the very command each worker would get, N times on this machine under bash, each
#   with its own $HOME (DIR/workerI, holding links to this checkout and the venv), fake CPU
#   devices and jax.distributed on localhost in place of --distributed; waits for all and
#   exits with the worst status.
# shellcheck source-path=SCRIPTDIR source=_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

WORKER=""
DISTRIBUTED=1
RESTART=0
ON_PREEMPTION=recreate
POLL_SECONDS=60
MAX_RESTARTS=20
LOCAL_SIM=0
LOCAL_SIM_DIR=""
LOCAL_SIM_DEVICES=2
LOCAL_SIM_TIMEOUT=900
LOCAL_VENV="${VIRTUAL_ENV:-}"
job_args=()
env_args=()
gin_files=0

# resolve_gin_file F: F as a path relative to the repository (what the workers' cwd is);
# F may be given relative to the current directory or to the repository.
resolve_gin_file() {
  local f="$1" abs=""
  if [[ "$f" == gs://* ]]; then
    echo "$f"
    return
  fi
  if [[ "$f" == /* ]]; then
    [[ -f "$f" ]] && abs="$f"
  elif [[ -f "$f" ]]; then
    abs="$(pwd)/$f"
  elif [[ -f "$REPO/$f" ]]; then
    abs="$REPO/$f"
  fi
  [[ -n "$abs" ]] || die "--gin_file $f: no such file (looked in $(pwd) and $REPO)"
  abs="$(cd "$(dirname "$abs")" && pwd)/$(basename "$abs")"
  [[ "$abs" == "$REPO/"* ]] || die "--gin_file $f is outside this checkout ($REPO): the \
workers only get the checkout (setup.sh); move it under gin/ or put it on GCS"
  echo "${abs#"$REPO/"}"
}

while [[ $# -gt 0 ]]; do
  if parse_common "$@" || parse_create "$@" || parse_setup "$@"; then
    shift "$SHIFT"
    continue
  fi
  case "$1" in
    train|infer|eval) [[ -z "$JOB" ]] || die "two jobs given ($JOB and $1)"; JOB="$1" ;;
    --job=*) JOB="${1#*=}" ;;
    --gin_file=*) job_args+=("--gin_file=$(resolve_gin_file "${1#*=}")"); gin_files=1 ;;
    --gin.*=*|--gin_bindings=*|--gin_search_paths=*) job_args+=("$1") ;;
    --gin.*) die "$1: gin macros are passed as --gin.NAME=VALUE" ;;
    --env=*)
      [[ "${1#--env=}" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] \
        || die "--env expects NAME=VALUE (got '${1#--env=}')"
      env_args+=("${1#--env=}") ;;
    --worker=*) WORKER="${1#*=}" ;;
    --no_distributed) DISTRIBUTED=0 ;;
    --restart_on_preemption) RESTART=1 ;;
    --on_preemption=*) ON_PREEMPTION="${1#*=}" ;;
    --poll_seconds=*) POLL_SECONDS="${1#*=}" ;;
    --max_restarts=*) MAX_RESTARTS="${1#*=}" ;;
    --local_sim=*) LOCAL_SIM="${1#*=}" ;;
    --local_sim_dir=*) LOCAL_SIM_DIR="${1#*=}" ;;
    --local_sim_devices=*) LOCAL_SIM_DEVICES="${1#*=}" ;;
    --local_sim_timeout=*) LOCAL_SIM_TIMEOUT="${1#*=}" ;;
    --local_venv=*) LOCAL_VENV="${1#*=}" ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown flag $1 (gin flags are --gin_file=F and --gin.NAME=VALUE; see --help)" ;;
  esac
  shift
done

check_job
[[ "$gin_files" == 1 ]] || die "no --gin_file given: nothing to configure the $JOB job"
if [[ "$JOB" == eval ]]; then
  WORKER="${WORKER:-0}"
  DISTRIBUTED=0  # eval is host-side numpy over the JSONL predictions: one process
fi
WORKER="${WORKER:-all}"
[[ "$WORKER" == all || "$WORKER" =~ ^[0-9]+$ ]] || die "--worker must be 'all' or an index"
[[ "$POLL_SECONDS" =~ ^[0-9]+$ ]] || die "--poll_seconds must be a number of seconds"
[[ "$MAX_RESTARTS" =~ ^[0-9]+$ ]] || die "--max_restarts must be a number"
[[ "$LOCAL_SIM" =~ ^[0-9]+$ ]] || die "--local_sim must be a number of workers"
[[ "$LOCAL_SIM_DEVICES" =~ ^[1-9][0-9]*$ ]] || die "--local_sim_devices must be >= 1"
case "$ON_PREEMPTION" in
  recreate|wait) ;;
  *) die "--on_preemption must be recreate or wait (got '$ON_PREEMPTION')" ;;
esac

# worker_command DIST_ARGS...: the shell command each worker runs (a string for its shell).
# The job runs in its own session (setsid), so the ssh connection can end and stop.sh can
# signal the whole process group; its shell traps SIGTERM so that it outlives the signal
# and records the job's exit status once the job has saved its checkpoint and exited.
worker_command() {
  local logs="\$HOME/$LOG_DIR/$JOB" inner="" kv argv
  inner+="echo \$\$ > $logs.pid; trap : TERM; cd \$HOME/$REMOTE_DIR && "
  for kv in ${env_args[@]+"${env_args[@]}"}; do
    inner+="export ${kv%%=*}=$(shquote "${kv#*=}") && "
  done
  # $HOME stays unquoted (the worker's shell expands it); every argument is quoted.
  argv="\$HOME/$REMOTE_VENV/bin/python $(shjoin -m "flanrec.$JOB" \
          ${job_args[@]+"${job_args[@]}"} "$@")"
  inner+="$argv > $logs.log 2>&1 < /dev/null; echo \$? > $logs.exit"
  printf '%s' "mkdir -p \$HOME/$LOG_DIR && if [ -f $logs.pid ] && kill -0 \"\$(cat $logs.pid)\""
  printf '%s' " 2> /dev/null; then echo \"\$(hostname): $JOB is still running (stop.sh first)\" >&2;"
  # `;` before setsid, not `&&`: `a && b &` would background a subshell that holds the ssh
  # session's stdout open until the job ends.
  printf '%s' " exit 3; fi; rm -f $logs.exit $logs.pid;"
  printf '%s' " setsid nohup bash -c $(shquote "$inner") > /dev/null 2>&1 < /dev/null &"
  printf '%s' " echo \"\$(hostname): $JOB started, log $logs.log\""
}

dist_args=()
if [[ "$DISTRIBUTED" == 1 ]]; then
  dist_args=(--distributed)
fi

launch_job() {
  tpu_ssh "$WORKER" "$(worker_command ${dist_args[@]+"${dist_args[@]}"})"
}

# ----------------------------------------------------------------- local simulation
local_sim() {
  local n="$LOCAL_SIM" dir port i home cmd deadline status worst=0 done_count failed
  [[ -n "$LOCAL_VENV" && -x "$LOCAL_VENV/bin/python" ]] \
    || die "--local_venv (or an active virtualenv) is needed: the Python environment \
that has flanrec installed"
  dir="${LOCAL_SIM_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/flanrec-sim.XXXXXX")}"
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  port="$("$LOCAL_VENV/bin/python" -c 'import socket; s = socket.socket(); \
s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  for ((i = 0; i < n; i++)); do
    home="$dir/worker$i"
    mkdir -p "$home"
    ln -sfn "$REPO" "$home/$REMOTE_DIR"
    ln -sfn "$LOCAL_VENV" "$home/$REMOTE_VENV"
    if [[ "$DISTRIBUTED" == 1 && "$n" -gt 1 ]]; then
      cmd="$(worker_command "--coordinator_address=127.0.0.1:$port" "--num_processes=$n" \
             "--process_id=$i")"
    else
      cmd="$(worker_command)"
    fi
    run env "HOME=$home" JAX_PLATFORMS=cpu \
      "XLA_FLAGS=--xla_force_host_platform_device_count=$LOCAL_SIM_DEVICES ${XLA_FLAGS:-}" \
      bash -c "$cmd"
  done
  [[ "$DRY_RUN" == 1 ]] && return 0
  deadline=$((SECONDS + LOCAL_SIM_TIMEOUT))
  while :; do
    done_count=0
    failed=0
    for ((i = 0; i < n; i++)); do
      if [[ -f "$dir/worker$i/$LOG_DIR/$JOB.exit" ]]; then
        done_count=$((done_count + 1))
        [[ "$(cat "$dir/worker$i/$LOG_DIR/$JOB.exit")" == 0 ]] || failed=1
      fi
    done
    [[ "$done_count" == "$n" ]] && break
    # One worker failed or time is up: the others would wait in a collective; end them.
    if [[ "$failed" == 1 ]] || ((SECONDS > deadline)); then
      for ((i = 0; i < n; i++)); do
        if [[ -f "$dir/worker$i/$LOG_DIR/$JOB.pid" ]]; then
          kill -KILL -- "-$(cat "$dir/worker$i/$LOG_DIR/$JOB.pid")" 2> /dev/null || true
        fi
      done
      [[ "$failed" == 1 ]] && break
      die "local simulation: not finished after ${LOCAL_SIM_TIMEOUT}s; logs in $dir"
    fi
    sleep 1
  done
  for ((i = 0; i < n; i++)); do
    status="$(cat "$dir/worker$i/$LOG_DIR/$JOB.exit" 2> /dev/null || echo killed)"
    note "worker $i: exit $status, log $dir/worker$i/$LOG_DIR/$JOB.log"
    if [[ "$status" != 0 ]]; then
      tail -n 20 "$dir/worker$i/$LOG_DIR/$JOB.log" >&2 || true
      [[ "$status" =~ ^[0-9]+$ ]] && worst="$status" || worst=1
    fi
  done
  return "$worst"
}

# ----------------------------------------------------------------- restart on preemption
SETTINGS_FORMAT='--format=value(acceleratorType,runtimeVersion,schedulingConfig.spot,schedulingConfig.preemptible)'

# slice_settings: the accelerator type, runtime and provisioning of the slice as it is now,
# for recreating it after a preemption when create.sh's flags were not given.
slice_settings() {
  local out rc=0 acc ver spot pre
  gcloud_target_flags
  out="$(query gcloud compute tpus tpu-vm describe "$TPU_NAME" "${GCLOUD_FLAGS[@]}" \
         "$SETTINGS_FORMAT")" || rc=$?
  [[ "$rc" == 0 ]] || die "no --accelerator_type given and slice $TPU_NAME cannot be \
described (gcloud exit $rc): give create.sh's flags (--accelerator_type=v4-8, --spot, ...) so \
that a preempted slice can be recreated"
  IFS=$'\t' read -r acc ver spot pre <<< "$(printf '%s\n' "$out" | tail -n 1)"
  [[ -n "$acc" ]] || die "slice $TPU_NAME reports no accelerator type; give --accelerator_type"
  ACCELERATOR_TYPE="$acc"
  RUNTIME_VERSION="${RUNTIME_VERSION:-$ver}"
  if [[ "$PROVISIONING" == standard ]]; then
    if [[ "${spot,,}" == true ]]; then
      PROVISIONING=spot
    elif [[ "${pre,,}" == true ]]; then
      PROVISIONING=preemptible
    fi
  fi
  note "a preempted slice will be recreated as it is now: $ACCELERATOR_TYPE, runtime \
${RUNTIME_VERSION:-default}, $PROVISIONING"
}

# restart_plan: what --restart_on_preemption would do, printed under --dry_run without
# running gcloud (the poll needs a real slice to answer).
restart_plan() {
  gcloud_target_flags
  note "dry run: every ${POLL_SECONDS}s the loop polls the slice's state (and the job's on \
worker 0) with:"
  if [[ "$QUEUED" == 1 ]]; then
    run gcloud compute tpus queued-resources describe "$QR_NAME" "${GCLOUD_FLAGS[@]}" \
      "--format=value(state.state)"
  fi
  run gcloud compute tpus tpu-vm describe "$TPU_NAME" "${GCLOUD_FLAGS[@]}" \
    "--format=value(state)"
  note "dry run: READY: it launches the job"
  launch_job
  if [[ "$ON_PREEMPTION" == recreate ]]; then
    if [[ -z "$ACCELERATOR_TYPE" ]]; then
      note "dry run: no --accelerator_type: at the start it reads the slice's settings with"
      run gcloud compute tpus tpu-vm describe "$TPU_NAME" "${GCLOUD_FLAGS[@]}" \
        "$SETTINGS_FORMAT"
      ACCELERATOR_TYPE="SLICE_TYPE"
      RUNTIME_VERSION="${RUNTIME_VERSION:-SLICE_RUNTIME}"
    fi
    note "dry run: PREEMPTED, TERMINATED, SUSPENDED or gone: it recreates the slice"
    delete_node
    create_node
  else
    note "dry run: PREEMPTED, TERMINATED, SUSPENDED or gone: it waits for the slice"
  fi
  note "dry run: then sets it up again and relaunches the job"
  setup_workers
  launch_job
}

job_status() {
  local out
  out="$(tpu_ssh_query 0 "$(job_status_command)")" || { echo UNREACHABLE; return 0; }
  out="$(printf '%s\n' "$out" | tail -n 1)"
  echo "${out:-UNREACHABLE}"
}

restart_loop() {
  local restarts=0 need_setup=0 need_launch=1 state detail status ns
  while :; do
    ns="$(node_state)" || exit $?
    read -r state detail <<< "$ns"
    case "$state" in
      READY)
        if [[ "$need_setup" == 1 ]]; then
          note "slice $TPU_NAME is READY again: setting it up"
          setup_workers
          need_setup=0
        fi
        if [[ "$need_launch" == 1 ]]; then
          launch_job
          need_launch=0
        else
          status="$(job_status)" || exit $?
          case "$status" in
            RUNNING|UNREACHABLE) ;;
            "EXIT 0")
              note "the $JOB job finished (exit 0)"
              return 0 ;;
            RESUMABLE|LOST)
              note "the $JOB job stopped ($status) on a READY slice: relaunching it"
              need_launch=1
              continue ;;
            "EXIT "*)
              # The other workers would wait in their next collective until JAX's heartbeat
              # timeout (or forever): end them now, so the TPU is free for the next attempt.
              note "the $JOB job failed on worker 0: stopping it on all workers"
              tpu_ssh all "$(stop_command TERM 60)" || true
              die "the $JOB job failed with exit status ${status#EXIT } (not a preemption); \
see tpu_scripts/logs.sh --job=$JOB --worker=all" ;;
            *) note "unexpected job status '$status'; polling again" ;;
          esac
        fi
        ;;
      GONE)
        restarts=$((restarts + 1))
        ((restarts <= MAX_RESTARTS)) || die "slice $TPU_NAME gone ($detail) more than \
--max_restarts=$MAX_RESTARTS times; giving up"
        if [[ "$ON_PREEMPTION" == recreate ]]; then
          note "slice $TPU_NAME is $detail: recreating it (restart $restarts)"
          [[ "$detail" == NOT_FOUND ]] || delete_node
          create_node
        else
          note "slice $TPU_NAME is $detail: waiting for it to come back (restart $restarts)"
        fi
        need_setup=1
        need_launch=1
        ;;
      *) note "slice $TPU_NAME is $detail: waiting" ;;
    esac
    sleep "$POLL_SECONDS"
  done
}

if [[ "$LOCAL_SIM" -gt 0 ]]; then
  local_sim
  exit $?
fi
require_target
if [[ "$RESTART" == 1 ]]; then
  if [[ "$ON_PREEMPTION" == recreate && -n "$ACCELERATOR_TYPE" ]]; then
    require_accelerator
  fi
  check_setup_args
  if [[ "$DRY_RUN" == 1 ]]; then
    restart_plan
    exit 0
  fi
  if [[ "$ON_PREEMPTION" == recreate && -z "$ACCELERATOR_TYPE" ]]; then
    slice_settings
    require_accelerator
  fi
  restart_loop
else
  launch_job
fi
