#!/usr/bin/env bash
# Former name of setup.sh, kept so existing commands keep working: same flags.
exec "$(dirname "${BASH_SOURCE[0]}")/setup.sh" "$@"
