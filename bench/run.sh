#!/usr/bin/env bash
# Run every benchmark (about seven minutes on 2 CPUs); arguments go to `python -m bench`.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m bench "$@"
