#!/usr/bin/env bash
# The demo, from a fresh machine: makes .venv, installs, runs it on embedded Redis (no Docker).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[[ -x .venv/bin/python ]] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[demo]'
exec .venv/bin/python -m example_project.demo "$@"
