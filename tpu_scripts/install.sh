#!/usr/bin/env bash
# Install this checkout of flanrec (and JAX for TPU) on every worker of a TPU VM / pod slice.
#
#   tpu_scripts/install.sh --name=flanrec-v4 --zone=us-central2-b [--project=P] [--dry_run]
#
# The working tree (without .venv/.git) is packed locally, copied to all workers and installed
# in editable mode, so every worker runs exactly the code you have here.
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARBALL="${TARBALL:-/tmp/flanrec-src.tgz}"
JAX_SPEC="${JAX_SPEC:-jax[tpu]}"
while [[ $# -gt 0 ]]; do
  if parse_common "$@"; then shift "$SHIFT"; continue; fi
  case "$1" in
    --tarball=*) TARBALL="${1#*=}" ;;
    --jax=*) JAX_SPEC="${1#*=}" ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) die "unknown flag $1 (see --help)" ;;
  esac
  shift
done
require_target
gcloud_target_flags

run tar -czf "$TARBALL" --exclude=.venv --exclude=.git --exclude=__pycache__ -C "$REPO" .
run gcloud compute tpus tpu-vm scp "$TARBALL" "$TPU_NAME:flanrec-src.tgz" \
  "${GCLOUD_FLAGS[@]}" --worker=all
remote="set -e; rm -rf ~/$REMOTE_DIR && mkdir -p ~/$REMOTE_DIR"
remote+=" && tar -xzf ~/flanrec-src.tgz -C ~/$REMOTE_DIR"
remote+=" && python3 -m pip install -q -U pip"
remote+=" && python3 -m pip install -q -U '$JAX_SPEC'"
remote+=" && python3 -m pip install -q -e ~/$REMOTE_DIR"
remote+=" && python3 -c 'import jax, flanrec; print(jax.process_index(), jax.device_count())'"
tpu_ssh all "$remote"
