#!/usr/bin/env bash
# Install flanrec and JAX for TPU on every worker of a TPU VM / pod slice (--worker=all).
#
#   tpu_scripts/setup.sh --name=flanrec-v4 --zone=us-central2-b --project=P
#       [--git_url=URL --git_ref=REF | --wheel=dist/flanrec-0.1.0-py3-none-any.whl]
#       [--jax='jax[tpu]==0.6.2'] [--python=python3.11]
#       [--checkpoint=gs://t5-data/pretrained_models/t5x/flan_t5_base/checkpoint_1184000]...
#       [--only_checkpoints] [--dry_run]
#
# Source of the code, one of:
#   (default)  this working tree, packed (without .venv/.git/data/runs), copied with
#              `scp --worker=all` and installed editable, so every worker runs exactly what
#              you have here;
#   --git_ref  each worker clones --git_url and checks out REF (a branch, tag or commit);
#   --wheel    a built wheel copied to every worker (plus this checkout's gin/ configs).
# --checkpoint (repeatable) copies a T5X, HF or flanrec checkpoint dir from GCS to
# ~/flanrec/checkpoints/PARENT/NAME on every worker (e.g. checkpoints/flan_t5_base/
# checkpoint_1184000, the INITIAL_CHECKPOINT_PATH the gin/experiments files name);
# with --only_checkpoints nothing else is done (e.g. a trained checkpoint_N for inference).
# Everything goes into the virtualenv ~/flanrec-venv built with --python (flanrec needs
# Python >= 3.11; the Ubuntu 22.04 TPU images ship 3.10, so python3.11 is apt-installed when
# missing). The last step prints each worker's TPU devices: an empty list means the runtime
# image does not match the TPU generation, or another process holds the TPU.
# shellcheck source-path=SCRIPTDIR source=_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

while [[ $# -gt 0 ]]; do
  if parse_common "$@" || parse_setup "$@"; then shift "$SHIFT"; continue; fi
  case "$1" in
    -h|--help) usage; exit 0 ;;
    *) die "unknown flag $1 (see --help)" ;;
  esac
done
require_target
check_setup_args
setup_workers
