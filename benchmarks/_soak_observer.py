"""The soak's witness of etcd's truth: which keys exist under the service prefix, and since when.

    python benchmarks/_soak_observer.py --members 127.0.0.1:2379,... --prefix soak/echo/ --results F

It does not use aiodiscovery: it speaks etcd's gRPC API through aetcd's generated stubs
(``aetcd.rpc``), one channel per member and one watch per member at the same time, so that a
killed or frozen member silences only its own stream. Each stream lists the prefix, then watches
from the list's revision + 1; after a break (or a compaction past it) it lists again. Every stream
reports the key set at each revision it learns; the first report of a revision newer than any seen
is the truth from then on, stamped with the time it arrived (``time.monotonic()``). Replayed or
older revisions change nothing, so the slowest member never rolls the truth back.

It reports ``ready`` once it knows the truth, and writes the timeline to ``--results`` when its
stdin closes: ``[[time, revision, {key: address}], ...]``, plus per-member counters, and etcd's
history of the prefix (``history``: the testing kit's ``EtcdHistory``, a raw watch from the first
revision) for the soak's watch-history check.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import grpc
import grpc.aio
from _soak_child import emit, etcd_credentials, run_child, stop_on_eof_or_signal
from aetcd import rpc

from aiodiscovery.testing import EtcdHistory

_RANGE_TIMEOUT = 2.0
_RETRY_INITIAL = 0.05
_RETRY_CAP = 1.0
_PUT = 0


def prefix_end(prefix: bytes) -> bytes:
    """etcd's range end for every key starting with ``prefix``."""
    return prefix[:-1] + bytes([prefix[-1] + 1])


def address_of(value: bytes) -> str | None:
    """The ``Addr`` of an endpoint value; ``None`` if it is not one."""
    try:
        decoded = json.loads(value)
    except ValueError:
        return None
    addr = decoded.get("Addr") if isinstance(decoded, dict) else None
    return addr if isinstance(addr, str) else None


class Truth:
    """The newest key set any member reported, and its history."""

    def __init__(self) -> None:
        self.revision = 0
        self.keys: dict[str, str | None] = {}
        self.timeline: list[tuple[float, int, dict[str, str | None]]] = []
        self.known = asyncio.Event()

    def report(self, revision: int, keys: dict[str, str | None]) -> None:
        """A member's key set at ``revision``: the truth, unless a member told a newer one."""
        if revision <= self.revision:
            return
        changed = keys != self.keys
        self.revision = revision
        self.keys = dict(keys)
        if changed or not self.timeline:
            self.timeline.append((time.monotonic(), revision, dict(keys)))
        self.known.set()


class MemberStream:
    """One member's list-then-watch loop."""

    def __init__(self, address: str, prefix: str, truth: Truth) -> None:
        self.address = address
        self.prefix = prefix.encode()
        self.truth = truth
        self.lists = 0
        self.breaks = 0
        self.compactions = 0
        self.last_error = ""

    async def run(self) -> None:
        """List and watch this member, again after every break, until cancelled."""
        options = [
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
        ]
        delay = _RETRY_INITIAL
        async with grpc.aio.insecure_channel(self.address, options=options) as channel:
            kv, watch = rpc.KVStub(channel), rpc.WatchStub(channel)
            while True:
                try:
                    await self._list_and_watch(channel, kv, watch)
                    delay = _RETRY_INITIAL
                except grpc.aio.AioRpcError as exc:
                    self.breaks += 1
                    self.last_error = f"{exc.code().name}: {exc.details()}"
                await anyio.sleep(delay)
                delay = min(delay * 2, _RETRY_CAP)

    async def _metadata(self, channel: grpc.aio.Channel) -> list[tuple[str, str]]:
        """A fresh token for each round, when authentication is on: tokens live 1 s in the
        soak's ``--auth`` runs."""
        credentials = etcd_credentials()
        if not credentials:
            return []
        request = rpc.AuthenticateRequest(
            name=credentials["username"], password=credentials["password"]
        )
        reply = await rpc.AuthStub(channel).Authenticate(request, timeout=_RANGE_TIMEOUT)
        return [("token", reply.token)]

    async def _list_and_watch(self, channel: grpc.aio.Channel, kv: Any, watch: Any) -> None:
        end = prefix_end(self.prefix)
        metadata = await self._metadata(channel)
        listed = await kv.Range(
            rpc.RangeRequest(key=self.prefix, range_end=end),
            timeout=_RANGE_TIMEOUT,
            metadata=metadata,
        )
        self.lists += 1
        keys = {kv_.key.decode(): address_of(kv_.value) for kv_ in listed.kvs}
        revision = listed.header.revision
        self.truth.report(revision, keys)
        request = rpc.WatchRequest(
            create_request=rpc.WatchCreateRequest(
                key=self.prefix, range_end=end, start_revision=revision + 1
            )
        )
        call = watch.Watch(metadata=metadata)
        try:
            await call.write(request)
            async for response in self._responses(call):
                if response.compact_revision or response.canceled:
                    # Compacted past us, or cancelled: list again (the caller's next round).
                    self.compactions += 1
                    return
                for event in response.events:
                    if event.kv.mod_revision != revision:
                        # A response may span revisions: report the set at each one.
                        self.truth.report(revision, keys)
                        revision = event.kv.mod_revision
                    key = event.kv.key.decode()
                    if event.type == _PUT:
                        keys[key] = address_of(event.kv.value)
                    else:
                        keys.pop(key, None)
                self.truth.report(revision, keys)
        finally:
            call.cancel()

    @staticmethod
    async def _responses(call: Any) -> AsyncIterator[Any]:
        while True:
            response = await call.read()
            if response is grpc.aio.EOF:
                raise grpc.aio.AioRpcError(
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.aio.Metadata(),
                    grpc.aio.Metadata(),
                    details="watch stream ended",
                )
            yield response


async def run(args: argparse.Namespace) -> None:
    """Watch every member until told to stop, then write the timeline."""
    stop = asyncio.Event()
    stop_on_eof_or_signal(stop)
    truth = Truth()
    streams = [MemberStream(m, args.prefix, truth) for m in args.members.split(",")]
    # etcd's own history of the prefix, for the soak's check of what the client's watch
    # delivered: the testing kit's raw recorder (etcd's stubs, not the client under test).
    history = EtcdHistory(args.members, args.prefix, **etcd_credentials())
    async with history, anyio.create_task_group() as tg:
        for stream in streams:
            tg.start_soon(stream.run)
        with anyio.fail_after(30):
            await truth.known.wait()
        emit("ready", revision=truth.revision, keys=sorted(truth.keys))
        await stop.wait()
        tg.cancel_scope.cancel()
    result = {
        "history": history.to_json(),
        "timeline": truth.timeline,
        "members": {
            s.address: {
                "lists": s.lists,
                "breaks": s.breaks,
                "compactions": s.compactions,
                "last_error": s.last_error,
            }
            for s in streams
        },
    }
    await anyio.Path(args.results).write_text(json.dumps(result))
    emit("done", changes=len(truth.timeline))


def main() -> None:
    """The observer's command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--members", required=True, help="etcd members, host:port,...")
    parser.add_argument("--prefix", required=True, help="key prefix, ending in /")
    parser.add_argument("--results", required=True, help="where to write the JSON results")
    run_child(parser, run)


if __name__ == "__main__":
    main()
