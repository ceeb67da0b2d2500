"""A chaos soak: real etcd members and gRPC servers die, freeze and come back under steady calls.

Run it from the project root, in the project's virtual environment::

    python benchmarks/soak.py --duration 180 --seed 1          # about 3.5 minutes
    python benchmarks/soak.py --duration 40 --seed 2 --mass-deletion

Progress goes to stderr; stdout gets a markdown table by fault kind, the JSON summary (also written
to ``--json``) and a last line ``VERDICT: PASS`` or ``VERDICT: FAIL (reasons)``. The exit status is
0 when the verdict passes, 1 when it fails, 130 after Ctrl-C.

What runs, each in a process of its own, all on loopback:

- a 3-member etcd cluster (``aiodiscovery.testing.EtcdCluster``);
- ``--servers`` gRPC servers (``_soak_server.py``), each registered with a ``Registrar`` at
  ``--ttl`` on its own address; each dials the members in a rotated order, so that every member is
  the first choice of some server;
- a client (``_soak_client.py``): ``--callers`` callers through ``resolve()`` (round_robin) at
  ``--rate`` calls/s in total, every call with a deadline; it records each call and samples its
  channel's endpoint set;
- an observer of etcd's truth (``_soak_observer.py``) that does not use aiodiscovery: one raw watch
  per member, so that no single member's fault blinds it.

After ``--warmup`` seconds, a fault every 6-10 s (``--interval``), never two at once, in an order
drawn from ``--seed`` (each kind once per round, shuffled): ``leader_kill`` and ``follower_kill``
(SIGKILL, restart after ``--member-down`` s on the same ports and data), ``member_freeze``
(SIGSTOP for ``--freeze`` s, then SIGCONT, of a member that a server or the client is connected
to), ``compaction`` (to the current revision), ``server_graceful_restart`` (SIGTERM: the server
leaves its Registrar block, drains ``--drain`` s, exits; then starts again on the same port),
``server_kill`` (SIGKILL, restart on the same port after 0.5 to TTL + 2 s), ``member_partition``
(a member in use cut off from its peers, both ways, for ``--partition`` s while its clients still
reach it: every member's peer URL goes through the kit's ``TcpProxy``), ``member_latency``
(``--latency`` s added to the raft traffic to a member in use, for ``--partition`` s),
``member_replace`` (etcdctl member remove, then member add of a fresh member with a new data
directory on the same ports) and, with ``--mass-deletion``, ``mass_deletion`` (an operator's
``etcdctl del --prefix`` of the service).
``--faults`` narrows the draw (``--faults member_freeze,server_kill``). No fault ends later than
TTL + 3 s before the end.

``--auth`` turns etcd's authentication on with a 1 s token TTL (``--auth-token-ttl=1``) for the
whole run: every child authenticates (the password reaches them through their environment).
``--retry`` gives the client's channel a retry policy (gRFC A6, ``UNAVAILABLE``, 5 attempts).
``SOAK_DEBUG_LOGGERS=aiodiscovery.registrar,aiodiscovery.etcd`` in the environment puts those
loggers of every child at DEBUG (the library logs its retries' reasons there only).

The summary counts, from the children's records on one monotonic clock:

- calls, and failures by cause: in flight on a SIGKILLed server (started on it before it died,
  failed after the kill) versus everything else (sent to it after it died, no endpoint, ...);
- registration lapses: a live server's key missing from etcd for longer than TTL + 1 s (every
  shorter gap is listed too), and each ``LOST`` its Registrar reported;
- client staleness: after each change of etcd's endpoint set, how long until the client's set
  (subchannels not draining) matched it again (max and p99; resolution ``--sample-ms``);
- routing: how long the client kept sending calls to a SIGKILLed server after it died (or to a
  deregistered one after its key went), and how long after a restarted server registered the
  first call reached it;
- tracebacks in any child's stderr, and processes (etcd, servers, client, observer) still alive
  after the soak stopped them;
- the watch history: every batch the client's watch delivered, held against etcd's history of
  the service (recorded by the observer with the testing kit's ``EtcdHistory``) by
  ``aiodiscovery.testing.check_history``: ordered, unique, atomic, reliable, resumable, and the
  client's view equal to etcd's prefix at every revision it reported.

The verdict passes with no failure other than in flight on a SIGKILLed server, no lapse, no
broken history invariant, no traceback and no leaked process. With matplotlib (``pip install
'aiodiscovery[plot]'``) a timeline picture (calls/s, failures, faults, client staleness,
registration gaps) goes to ``--plot`` (default ``timeline.png`` in the work directory, which is
then kept). The children's stderr, their records and ``record.json`` stay in
``--workdir`` (default: a temporary directory, removed when the verdict passes unless ``--keep``);
``--analyse DIR`` prints the summary of a kept run again.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

from _soak_child import PASSWORD_ENV, USER_ENV
from _soak_plot import plot_timeline
from _soak_procs import Child, ChildError, connected_ports, processes_matching, tracebacks_in
from _soak_report import analyse, table
from _table import markdown_table  # benchmarks/ is on sys.path when a script runs

from aiodiscovery.testing import (
    EtcdCluster,
    EtcdHistory,
    EtcdServer,
    WatchRecord,
    check_history,
    free_port,
)

HERE = Path(__file__).resolve().parent
SERVICE = "soak/echo"
FAULTS = (
    "leader_kill",
    "follower_kill",
    "member_freeze",
    "compaction",
    "server_graceful_restart",
    "server_kill",
    "member_partition",
    "member_latency",
    "member_replace",
)
# A client retry policy (gRFC A6) for --retry: UNAVAILABLE only, the code of a call that never
# reached a server (connection refused, reset before the server read it).
RETRY_POLICY = {
    "methodConfig": [
        {
            "name": [{}],
            "retryPolicy": {
                "maxAttempts": 5,
                "initialBackoff": "0.05s",
                "maxBackoff": "1s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ]
}
SOAK_USER = "root"
_SPAWN_TIMEOUT = 30.0
_LEADER_TIMEOUT = 10.0
# Options that say where output goes, not how the soak ran.
_NOT_CONFIG = frozenset({"json", "workdir", "keep", "analyse", "plot"})


def log(message: str) -> None:
    """Progress, on stderr: stdout is for the table, the JSON and the verdict."""
    print(message, file=sys.stderr, flush=True)


@dataclass
class ServerSlot:
    """One server of the soak: a name and a port kept across its incarnations."""

    name: str
    port: int
    urls: str
    incarnation: int = 0
    child: Child | None = None
    current: dict[str, Any] = field(default_factory=dict)

    @property
    def address(self) -> str:
        """The address the server listens on and registers, the same in every incarnation."""
        return f"127.0.0.1:{self.port}"


class Soak:
    """One soak run: its processes, its fault schedule and its record."""

    def __init__(self, args: argparse.Namespace, workdir: Path, cluster: EtcdCluster) -> None:
        self.args = args
        self.workdir = workdir
        self.cluster = cluster
        self.rng = random.Random(args.seed)
        self.run_id = f"soak-{uuid.uuid4().hex[:12]}"
        self.children: list[Child] = []
        self.incarnations: list[tuple[dict[str, Any], Child]] = []
        self.faults: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self.client: Child | None = None
        # When the client started calling.
        self.t0: float | None = None
        self._bag: list[str] = []
        urls = [m.url for m in cluster.members]
        self.slots = [
            ServerSlot(f"s{i + 1}", free_port(), ",".join(urls[i % 3 :] + urls[: i % 3]))
            for i in range(args.servers)
        ]
        self.client_urls = ",".join(urls[1:] + urls[:1])

    def say(self, message: str) -> None:
        """A progress line, stamped with the time since the client started calling."""
        # Times from the first call on, as in the summary.
        if self.t0 is None:
            log(f"[  setup ] {message}")
        else:
            log(f"[{time.monotonic() - self.t0:7.2f}s] {message}")

    def spawn(self, name: str, script: str, *arguments: str) -> Child:
        """Start a child script of the soak, marked with the run id, its stderr in a file."""
        command = [sys.executable, str(HERE / script), *arguments, "--run-id", self.run_id]
        child = Child(name, command, self.workdir / f"{name}.stderr")
        self.children.append(child)
        return child

    # -- servers ----------------------------------------------------------------------------

    async def start_server(self, slot: ServerSlot) -> dict[str, Any]:
        """Start the slot's next incarnation and wait until it registered."""
        slot.incarnation += 1
        tag = f"{slot.name}#{slot.incarnation}"
        a = self.args
        child = self.spawn(
            f"{slot.name}-{slot.incarnation}",
            "_soak_server.py",
            *("--urls", slot.urls, "--service", SERVICE, "--name", slot.name),
            *("--incarnation", str(slot.incarnation), "--port", str(slot.port)),
            *("--ttl", str(a.ttl), "--drain", str(a.drain), "--work-ms", str(a.work_ms)),
        )
        record: dict[str, Any] = {
            "tag": tag,
            "name": slot.name,
            "address": slot.address,
            "launched": child.launched,
        }
        slot.child, slot.current = child, record
        self.incarnations.append((record, child))
        registered = await child.wait_event("registered", _SPAWN_TIMEOUT)
        record["registered"] = registered["t"]
        return record

    # -- faults -----------------------------------------------------------------------------

    def next_kind(self, time_left: float) -> str | None:
        """The next kind of fault of the shuffled round that fits in ``time_left`` seconds."""
        if not self._bag:
            kinds = list(self.args.faults)
            self.rng.shuffle(kinds)
            self._bag = kinds
        for i in range(len(self._bag) - 1, -1, -1):
            if self.fault_length(self._bag[i]) <= time_left:
                return self._bag.pop(i)
        return None

    def fault_length(self, kind: str) -> float:
        """A generous guess of how long ``kind`` takes to inflict and undo."""
        a = self.args
        lengths: dict[str, float] = {
            "leader_kill": a.member_down + 5,
            "follower_kill": a.member_down + 5,
            "member_freeze": a.freeze + 3,
            "server_kill": a.ttl + 2 + 5,
            "server_graceful_restart": a.drain + 8,
            "member_partition": a.partition + 5,
            "member_latency": a.partition + 5,
            "member_replace": 20.0,
        }
        return lengths.get(kind, 1.0)

    async def leader(self) -> EtcdServer:
        """The cluster's leader, waiting out an election."""
        deadline = time.monotonic() + _LEADER_TIMEOUT
        while True:
            leader = await asyncio.to_thread(self.cluster.leader)
            if leader is not None:
                return leader
            if time.monotonic() > deadline:
                raise RuntimeError(f"no etcd leader within {_LEADER_TIMEOUT:g} s")
            await asyncio.sleep(0.1)

    async def healthy(self) -> None:
        """Wait until every member reports healthy."""
        for member in self.cluster.members:
            await member.wait_ready()

    async def kill_member(self, member: EtcdServer, fault: dict[str, Any]) -> None:
        """SIGKILL ``member``, then restart it on the same ports and data."""
        fault["target"] = member.name
        member.kill()
        fault["killed"] = time.monotonic()
        await asyncio.sleep(self.args.member_down)
        # Same ports, same data directory.
        await member.restart()
        fault["restarted"] = time.monotonic()
        await self.healthy()

    async def leader_kill(self, fault: dict[str, Any]) -> None:
        """SIGKILL the leader and restart it."""
        await self.kill_member(await self.leader(), fault)

    async def follower_kill(self, fault: dict[str, Any]) -> None:
        """SIGKILL a follower and restart it."""
        leader = await self.leader()
        followers = [m for m in self.cluster.members if m is not leader]
        await self.kill_member(self.rng.choice(followers), fault)

    def member_users(self) -> dict[str, list[str]]:
        """Which servers and client each member's connections serve right now."""
        users: dict[str, list[str]] = {m.name: [] for m in self.cluster.members}
        for name, child in [(s.name, s.child) for s in self.slots] + [("client", self.client)]:
            if child is None or not child.running:
                continue
            ports = connected_ports(child.pid)
            for member in self.cluster.members:
                if member.client_port in ports:
                    users[member.name].append(name)
        return users

    async def member_freeze(self, fault: dict[str, Any]) -> None:
        """SIGSTOP a member in use for ``--freeze`` seconds, then SIGCONT."""
        # A member nobody talks to can freeze unnoticed: pick among those in use (a server's
        # Registrar or the client's watch), which drift as kills make them fail over.
        users = self.member_users()
        candidates = [m for m in self.cluster.members if users[m.name]] or self.cluster.members
        member = self.rng.choice(candidates)
        leader = await self.leader()
        notes = [*(["leader"] if member is leader else []), *users[member.name]]
        fault["target"] = f"{member.name} ({', '.join(notes) or 'unused'})"
        member.stop()
        fault["frozen"] = time.monotonic()
        await asyncio.sleep(self.args.freeze)
        member.resume()
        fault["resumed"] = time.monotonic()
        await self.healthy()

    def member_in_use(self, fault: dict[str, Any]) -> EtcdServer:
        """A member some server or the client talks to (any member if none), noted."""
        users = self.member_users()
        used = [m for m in self.cluster.members if users[m.name]] or list(self.cluster.members)
        member = self.rng.choice(used)
        fault["target"] = f"{member.name} ({', '.join(users[member.name]) or 'unused'})"
        return member

    async def member_partition(self, fault: dict[str, Any]) -> None:
        """Cut a member in use off from its peers for ``--partition`` s; its clients can still
        reach it (it answers them from a stale state, or not at all for what needs a leader)."""
        member = self.member_in_use(fault)
        self.cluster.isolate(member)
        fault["isolated"] = time.monotonic()
        try:
            await asyncio.sleep(self.args.partition)
        finally:
            self.cluster.rejoin(member)
        fault["rejoined"] = time.monotonic()
        await self.healthy()

    async def member_latency(self, fault: dict[str, Any]) -> None:
        """Add ``--latency`` s to the raft traffic to a member in use, for ``--partition`` s."""
        member = self.member_in_use(fault)
        proxy = self.cluster.peer_proxies[self.cluster.members.index(member)]
        proxy.latency = self.args.latency
        fault["target"] += f", +{self.args.latency * 1000:g} ms"
        try:
            await asyncio.sleep(self.args.partition)
        finally:
            proxy.latency = 0.0
        await self.healthy()

    async def member_replace(self, fault: dict[str, Any]) -> None:
        """Replace a member (etcd member remove + add, a fresh data directory, same URLs)."""
        member = self.rng.choice(self.cluster.members)
        leader = await self.leader()
        fault["target"] = f"{member.name}{' (leader)' if member is leader else ''}"
        fresh = await self.cluster.replace(member)
        fault["target"] += f" -> {fresh.name}"
        fault["replaced"] = time.monotonic()
        await self.healthy()

    async def compaction(self, fault: dict[str, Any]) -> None:
        """Compact etcd's history to the current revision."""
        # A write first (outside the service), so that there is always a new revision to compact
        # to, even right after another compaction.
        ctl = self.cluster.etcdctl
        out = await asyncio.to_thread(ctl, "put", "soak-probe", str(fault["index"]), "-w", "json")
        revision = json.loads(out)["header"]["revision"]
        await asyncio.to_thread(ctl, "compact", str(revision))
        fault["target"] = f"revision {revision}"

    async def mass_deletion(self, fault: dict[str, Any]) -> None:
        """An operator's ``etcdctl del --prefix`` of the whole service."""
        out = await asyncio.to_thread(self.cluster.etcdctl, "del", "--prefix", f"{SERVICE}/")
        fault["target"] = f"{SERVICE}/ ({out.strip()} keys)"

    def pick_server(self, fault: dict[str, Any]) -> tuple[ServerSlot, Child]:
        """A server drawn for a fault, noted in the fault."""
        slot = self.rng.choice(self.slots)
        assert slot.child is not None
        fault["target"] = slot.current["tag"]
        fault["address"] = slot.address
        return slot, slot.child

    async def restart_server(self, slot: ServerSlot, fault: dict[str, Any]) -> None:
        """Start the slot's next incarnation, on the same port."""
        fault["relaunched"] = time.monotonic()
        record = await self.start_server(slot)
        fault["registered"] = record["registered"]
        fault["incarnation"] = record["tag"]

    async def server_graceful_restart(self, fault: dict[str, Any]) -> None:
        """SIGTERM a server (it deregisters, drains, exits), then start it again."""
        slot, child = self.pick_server(fault)
        fault["signalled"] = slot.current["ended"] = child.signal(signal.SIGTERM)
        slot.current["end_reason"] = "SIGTERM"
        fault["deregistered"] = (await child.wait_event("deregistered", 15))["t"]
        if await child.wait_exit(self.args.drain + 10) is None:
            child.kill()
            raise RuntimeError(f"{slot.current['tag']} did not exit after SIGTERM")
        fault["exited"] = time.monotonic()
        await self.restart_server(slot, fault)

    async def server_kill(self, fault: dict[str, Any]) -> None:
        """SIGKILL a server, then start it again after 0.5 to TTL + 2 s."""
        slot, child = self.pick_server(fault)
        signalled, died = child.kill()
        fault["signalled"] = slot.current["ended"] = signalled
        fault["died"] = died
        slot.current["end_reason"] = "SIGKILL"
        await asyncio.sleep(self.rng.uniform(0.5, self.args.ttl + 2))
        await self.restart_server(slot, fault)

    async def schedule(self, end: float) -> None:
        """Faults one after the other until too little time is left for the next one."""
        a = self.args
        last_start = end - (a.ttl + 3)
        assert self.t0 is not None
        next_start = self.t0 + a.warmup
        while True:
            await asyncio.sleep(max(0.0, next_start - time.monotonic()))
            kind = self.next_kind(last_start - time.monotonic())
            if kind is None:
                return
            fault: dict[str, Any] = {
                "index": len(self.faults),
                "kind": kind,
                "target": "",
                "start": time.monotonic(),
            }
            self.faults.append(fault)
            action: Callable[[dict[str, Any]], Awaitable[None]] = getattr(self, kind)
            self.say(f"fault {fault['index']}: {kind} ...")
            try:
                await action(fault)
            except (ChildError, RuntimeError, TimeoutError) as exc:
                fault["end"] = time.monotonic()
                self.errors.append(f"fault {fault['index']} ({kind}): {exc}")
                self.say(f"fault {fault['index']} failed: {exc}; no more faults")
                return
            fault["end"] = time.monotonic()
            self.say(f"fault {fault['index']}: {kind} {fault['target']} done")
            low, high = a.interval
            next_start = max(fault["start"] + self.rng.uniform(low, high), fault["end"] + 1)

    # -- the run ----------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        """Start everything, call and inflict faults for ``--duration``, stop everything."""
        a = self.args
        observer = self.spawn(
            "observer",
            "_soak_observer.py",
            *("--members", ",".join(f"127.0.0.1:{m.client_port}" for m in self.cluster.members)),
            *("--prefix", f"{SERVICE}/", "--results", str(self.workdir / "observer.json")),
        )
        await observer.wait_event("ready", _SPAWN_TIMEOUT)
        await asyncio.gather(*(self.start_server(slot) for slot in self.slots))
        self.say(f"{len(self.slots)} servers registered; starting the client")
        names = {slot.address: slot.name for slot in self.slots}
        self.client = client = self.spawn(
            "client",
            "_soak_client.py",
            *("--urls", self.client_urls, "--service", SERVICE, "--expect", str(len(self.slots))),
            *("--names", json.dumps(names), "--callers", str(a.callers), "--rate", str(a.rate)),
            *("--call-timeout", str(a.call_timeout), "--sample-ms", str(a.sample_ms)),
            *("--max-seconds", str(a.duration + 120), "--seed", str(a.seed)),
            *("--results", str(self.workdir / "client.json")),
            *(("--service-config", json.dumps(RETRY_POLICY)) if a.retry else ()),
        )
        ready = await client.wait_event("ready", _SPAWN_TIMEOUT)
        calls_started = ready["t"]
        self.t0 = calls_started
        self.say(f"client calling ({a.callers} callers, {a.rate:g} calls/s)")
        end = calls_started + a.duration
        await self.schedule(end)
        await asyncio.sleep(max(0.0, end - time.monotonic()))
        calls_stopped = time.monotonic()
        self.say("stopping the client")
        client.close_stdin()
        await client.wait_event("done", a.call_timeout + 30)
        await client.stop(10)
        for slot in self.slots:
            slot.current.setdefault("ended", calls_stopped)
            slot.current.setdefault("end_reason", "end of run")
        self.say("stopping the servers and the observer")
        await asyncio.gather(*(slot.child.stop(a.drain + 10) for slot in self.slots if slot.child))
        await observer.stop(10)
        for record, child in self.incarnations:
            record["losses"] = [
                {"t": e["t"], "reason": e.get("reason")} for e in child.seen("lost")
            ]
        return {
            "calls_started": calls_started,
            "calls_stopped": calls_stopped,
            "faults": self.faults,
            "incarnations": [record for record, _ in self.incarnations],
            "client": json.loads((self.workdir / "client.json").read_text()),
            "observer": json.loads((self.workdir / "observer.json").read_text()),
        }

    def destroy(self) -> None:
        """Kill every child still running (cleanup on any path)."""
        for child in self.children:
            child.destroy()


def check_client_history(observer: dict[str, Any], client: dict[str, Any]) -> dict[str, Any]:
    """Hold what the client's watch delivered against etcd's history of the service (recorded
    by the observer: gRPC in this process would break the fork of every child it starts)."""
    watched = WatchRecord.from_json(client["watch_record"])
    history = EtcdHistory.from_json(observer.pop("history"))
    check = check_history(history, [watched])
    return {
        **check.to_json(),
        "batches": len(watched.deliveries),
        "etcd_events": len(history.events),
        "history_holes": history.holes,
        "history_resumes": history.resumes,
    }


def config_of(args: argparse.Namespace) -> dict[str, Any]:
    """The run's settings, as the summary states them."""
    config = {key: value for key, value in vars(args).items() if key not in _NOT_CONFIG}
    config.update(
        service=SERVICE,
        command=" ".join(["python", *sys.argv]),
        python=platform.python_version(),
        grpcio=version("grpcio"),
        cpus=os.cpu_count(),
        load_average_at_start=round(os.getloadavg()[0], 2),
    )
    return config


async def soak(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Run the soak; the record of what happened."""
    config = config_of(args)
    record: dict[str, Any] = {"config": config}
    # SIGTERM ends the soak as Ctrl-C does: cancelled, its children and etcd stopped on the way out.
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    errors: list[str] = []
    stderr_files: list[Path] = []
    needles: list[str] = []
    extra = ["--auth-token-ttl=1"] if args.auth else []
    async with EtcdCluster(3, peer_proxies=True, extra_args=extra) as cluster:
        needles.append(str(cluster._base))
        if args.auth:
            # Every child reads these (see _soak_child.etcd_credentials); tokens live 1 s.
            password = uuid.uuid4().hex
            await asyncio.to_thread(cluster.enable_auth, SOAK_USER, password)
            os.environ[USER_ENV], os.environ[PASSWORD_ENV] = SOAK_USER, password
        log(f"etcd cluster at {cluster.urls}; work directory {workdir}")
        run = Soak(args, workdir, cluster)
        needles.append(run.run_id)
        try:
            record.update(await run.run())
            record["history"] = check_client_history(record["observer"], record["client"])
        except (ChildError, RuntimeError, TimeoutError, OSError) as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            log(f"soak aborted: {exc}")
        finally:
            run.destroy()
            errors += run.errors
            stderr_files = [child.stderr_path for child in run.children]
            # A child the soak did not SIGKILL must have exited by itself, with status 0.
            record["crashed"] = [
                {"process": child.name, "exit_status": child.popen.returncode}
                for child in run.children
                if not child.killed and child.popen.returncode != 0
            ]
    config["load_average_at_end"] = round(os.getloadavg()[0], 2)
    record["errors"] = errors
    record["tracebacks"] = tracebacks_in(stderr_files)
    record["leaked"] = processes_matching(needles)
    return record


def report(summary: dict[str, Any], json_path: str | None) -> None:
    """Print the table, the JSON and the verdict line; write the JSON to ``json_path``."""
    text = json.dumps(summary, indent=2)
    if json_path:
        Path(json_path).write_text(text + "\n")
    c = summary["config"]
    print(
        f"soak: {c['duration']:g} s, seed {c['seed']}, ttl {c['ttl']} s, {c['servers']} servers, "
        f"{c['callers']} callers at {c['rate']:g} calls/s | Python {c['python']} | "
        f"grpcio {c['grpcio']} | {c['cpus']} CPUs | load average {c['load_average_at_start']} at "
        f"start, {c.get('load_average_at_end')} at end"
    )
    print()
    print(markdown_table(table(summary)))
    print()
    print(text)
    verdict = summary["verdict"]
    calls = summary["calls"]
    failures = summary["failures"]
    staleness = summary["client_staleness"]
    figures = (
        f"{calls['total']} calls, {failures['in_flight_on_sigkilled_server']} failed in flight on "
        f"a SIGKILLed server, {failures['other']} other failures, "
        f"{summary['registration']['lapses']} lapses, staleness max {staleness['max_s']} s, "
        f"{len(summary['tracebacks'])} tracebacks, {len(summary['leaked_processes'])} leaked, "
        f"history {history_figures(summary.get('history'))}"
    )
    if verdict["pass"]:
        print(f"VERDICT: PASS ({figures})")
    else:
        print(f"VERDICT: FAIL: {'; '.join(verdict['reasons'])} ({figures})")


def history_figures(history: dict[str, Any] | None) -> str:
    """The history check in a few words."""
    if history is None:
        return "not checked"
    broken = {k: v for k, v in history["violations"].items() if v}
    state = "invariants hold" if history["ok"] else f"BROKEN {broken}"
    return f"{state} ({history['checked']} batches checked, {history['unverified']} unverified)"


def parse_args() -> argparse.Namespace:
    """The soak's command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=180.0, help="seconds of calls")
    parser.add_argument("--seed", type=int, default=1, help="seeds the fault schedule")
    parser.add_argument("--ttl", type=int, default=3, help="the Registrars' lease TTL")
    parser.add_argument("--servers", type=int, default=4)
    parser.add_argument("--callers", type=int, default=32)
    parser.add_argument("--rate", type=float, default=1100.0, help="calls/s, all callers")
    parser.add_argument("--call-timeout", type=float, default=5.0, help="each call's deadline")
    parser.add_argument("--sample-ms", type=float, default=5.0, help="client set sampling")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds before the 1st fault")
    parser.add_argument(
        "--interval", type=float, nargs=2, default=(6.0, 10.0), metavar=("MIN", "MAX")
    )
    parser.add_argument("--member-down", type=float, default=2.0, help="s a member stays killed")
    parser.add_argument("--freeze", type=float, default=8.0, help="s a member stays SIGSTOPped")
    parser.add_argument("--drain", type=float, default=1.0, help="s a leaving server drains")
    parser.add_argument("--work-ms", type=float, default=4.0, help="mean server work per call")
    parser.add_argument("--mass-deletion", action="store_true", help="add operator del --prefix")
    parser.add_argument(
        "--partition", type=float, default=6.0, help="s a member stays cut off or slowed"
    )
    parser.add_argument("--latency", type=float, default=0.3, help="s added to a member's peers")
    parser.add_argument("--auth", action="store_true", help="etcd auth on, 1 s token TTL")
    parser.add_argument("--retry", action="store_true", help="a retry policy on the client")
    parser.add_argument("--plot", help="the timeline PNG (default: timeline.png in the workdir)")
    parser.add_argument("--json", help="also write the JSON summary to this file")
    parser.add_argument("--workdir", help="keep logs and records here (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir after a pass")
    parser.add_argument("--analyse", metavar="DIR", help="summarise a kept run again, and exit")
    parser.add_argument(
        "--faults",
        type=lambda text: text.split(","),
        default=list(FAULTS),
        help=f"kinds of fault to draw from, comma-separated (default: {','.join(FAULTS)})",
    )
    args = parser.parse_args()
    unknown = set(args.faults) - {*FAULTS, "mass_deletion"}
    if unknown:
        parser.error(f"unknown fault kinds: {', '.join(sorted(unknown))}")
    if args.mass_deletion and "mass_deletion" not in args.faults:
        args.faults.append("mass_deletion")
    if args.servers < 1 or args.callers < 1 or args.rate <= 0 or args.duration <= 0:
        parser.error("--servers, --callers, --rate and --duration must be positive")
    return args


def main() -> int:
    """Run (or re-analyse) a soak; the exit status."""
    args = parse_args()
    if args.analyse:
        record = json.loads((Path(args.analyse) / "record.json").read_text())
        summary = analyse(record)
        report(summary, args.json)
        if args.plot and plot_timeline(record, summary, Path(args.plot)):
            log(f"timeline picture: {args.plot}")
        return 0 if summary["verdict"]["pass"] else 1
    own_dir = args.workdir is None
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="aiodiscovery-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        record = asyncio.run(soak(args, workdir))
    except (KeyboardInterrupt, asyncio.CancelledError):
        log(f"interrupted; logs in {workdir}")
        return 130
    (workdir / "record.json").write_text(json.dumps(record))
    if "client" not in record:
        log(f"the soak did not complete: {record['errors']}; logs in {workdir}")
        return 1
    summary = analyse(record)
    report(summary, args.json)
    picture = Path(args.plot) if args.plot else workdir / "timeline.png"
    plotted = plot_timeline(record, summary, picture)
    if plotted:
        log(f"timeline picture: {picture}")
    else:
        log("no timeline picture: install the plotting extra, pip install 'aiodiscovery[plot]'")
    passed = bool(summary["verdict"]["pass"])
    if own_dir and passed and not args.keep and not (plotted and not args.plot):
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        log(f"logs and records kept in {workdir}")
    return 0 if passed else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
