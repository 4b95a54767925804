#!/usr/bin/env bash
# Create a Cloud TPU VM or pod slice (directly, or through a queued resource).
#
#   tpu_scripts/create.sh --name=flanrec-v4 --zone=us-central2-b --project=P \
#       --accelerator_type=v4-32 [--version=RUNTIME] [--spot | --preemptible] \
#       [--queued [--qr_name=ID] [--valid_until_duration=6h]] [--dry_run]
#
# The accelerator type is checked against the TPU generations and sizes tpu_scripts knows
# (v4-8 … v4-4096, v5litepod-1 … -256, v5p-8 …, v6e-1 … -256, v2/v3); --version defaults to
# the runtime image Google lists for JAX on that generation (v4: tpu-ubuntu2204-base, v5e:
# v2-alpha-tpuv5-lite, v5p: v2-alpha-tpuv5, v6e: v2-alpha-tpuv6e), and an image of another
# generation is refused. --queued requests the slice as a queued resource (waits in Google's
# queue instead of failing when capacity is short; see `gcloud compute tpus queued-resources`).
# A pod slice (e.g. v4-32 = 4 workers) is one `create`; the other scripts address all its
# workers with --worker=all.
# shellcheck source-path=SCRIPTDIR source=_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

while [[ $# -gt 0 ]]; do
  if parse_common "$@" || parse_create "$@"; then shift "$SHIFT"; continue; fi
  case "$1" in
    -h|--help) usage; exit 0 ;;
    *) die "unknown flag $1 (see --help)" ;;
  esac
done
require_target
require_accelerator
note "$ACCELERATOR_TYPE: $ACC_DEVICES JAX devices on $ACC_HOSTS worker(s), ${ACC_HBM_GIB} GiB \
HBM each; runtime $RUNTIME_VERSION; $PROVISIONING$([[ "$QUEUED" == 1 ]] && echo ", queued")"
create_node
