#!/usr/bin/env bash
# Build the separate virtualenv that runs seqio's offline cache job (Apache Beam) on flanrec
# tasks; prints the venv's python when done.
#
#   tpu_scripts/make_cache_venv.sh [--venv=DIR] [--python=python3.11] [--dry_run]
#
# Why a venv of its own: apache-beam requires protobuf < 7 and installs 6.x, while the main
# environment runs protobuf 7 (what TensorFlow 2.21 and seqio pull in), and sentencepiece
# 0.2.3's generated code refuses a protobuf runtime older than 7, so this venv also takes
# sentencepiece < 0.2.3. Installing Beam into the main venv would downgrade protobuf under
# everything that was tested there. The two venvs share only this checkout (installed
# editable here too) and the data on disk. Default DIR: .venv-cache in the repository root.
#
# Then, with the prepared data where `import tasks` finds it (FLANREC_DATA_DIR):
#   .venv-cache/bin/python -m seqio.scripts.cache_tasks_main --tasks='ml100k_.*' \
#       --output_cache_dir=/data/seqio_cache --module_import=tasks
#   python -m flanrec.train ... --gin.USE_CACHED_TASKS=True \
#       --seqio_additional_cache_dirs=/data/seqio_cache
# On Dataflow add --pipeline_options=--runner=DataflowRunner,--project=...,--region=...
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO/.venv-cache"
PYTHON="python3"
DRY_RUN=0

die() { echo "make_cache_venv.sh: error: $*" >&2; exit 2; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --venv=*) VENV="${1#*=}" ;;
    --venv) [[ $# -ge 2 ]] || die "--venv needs a directory"; VENV="$2"; shift ;;
    --python=*) PYTHON="${1#*=}" ;;
    --python) [[ $# -ge 2 ]] || die "--python needs an interpreter"; PYTHON="$2"; shift ;;
    --dry_run) DRY_RUN=1 ;;
    -h|--help) sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown flag $1 (see --help)" ;;
  esac
  shift
done

# What goes into the venv: this checkout, Beam with a C crc32c (TFRecord checksums), and the
# sentencepiece whose generated code runs on Beam's protobuf.
PACKAGES=(-e "$REPO" "apache-beam>=2.60" "google-crc32c>=1.5" "sentencepiece>=0.2.0,<0.2.3")

run() {
  if [[ "$DRY_RUN" == 1 ]]; then
    printf '%q ' "$@"; echo
  else
    "$@"
  fi
}

command -v "$PYTHON" >/dev/null 2>&1 || die "--python $PYTHON: not found"
if [[ -e "$VENV" && ! -x "$VENV/bin/python" ]]; then
  die "$VENV exists and is not a virtualenv; pass --venv=DIR"
fi
[[ -x "$VENV/bin/python" ]] || run "$PYTHON" -m venv "$VENV"
run "$VENV/bin/python" -m pip install -q --upgrade pip
run "$VENV/bin/python" -m pip install -q "${PACKAGES[@]}"
run "$VENV/bin/python" -c "import apache_beam, google.protobuf, seqio, flanrec.data.seqio_tasks; \
print('apache-beam', apache_beam.__version__, '| protobuf', google.protobuf.__version__, \
'| seqio', seqio.__version__)"
echo "$VENV/bin/python"
