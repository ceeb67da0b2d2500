"""One etcd watch stream on the member in use, guarded against a member that goes silent.

A watch that receives nothing may be quiet, or its member may be frozen: only asking tells. While
the stream is idle its member is checked (:meth:`MemberSet.alive`: any answer from that member
within a heartbeat counts, else one probe shared by every idle stream on it); a member that does
not answer is abandoned and the stream fails at once, so its owner resumes on another member within
about two heartbeats instead of the 13 s of gRPC's keep-alive ping and its timeout. A stream also
leaves as soon as anyone else abandons its member.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import anyio
import anyio.abc
import grpc
from aetcd import rpc

from ..._exceptions import EtcdError, EtcdUnavailableError
from ..._grpccall import close_call, rpc_step
from ..rpc import translate_error
from ..transport import Transport

__all__ = ["run_watch"]


class _Stream:
    """One open watch call: the reader and the guard, and how the stream ended."""

    def __init__(
        self,
        client: Transport,
        create: rpc.WatchCreateRequest,
        handle: Callable[[rpc.WatchResponse], None],
        probe_idle: bool,
    ) -> None:
        self.client = client
        self.create = create
        self.handle = handle
        self.probe_idle = probe_idle
        self.member = client.members.active
        self.abandoned = self.member.abandoned()
        self.call = self.member.watch.Watch(metadata=client.stream_metadata())
        self.error: BaseException | None = None
        self._task_group: anyio.abc.TaskGroup | None = None

    async def run(self) -> BaseException:
        """Run the reader and the guard until one of them fails; return why."""
        try:
            async with anyio.create_task_group() as self._task_group:
                self._task_group.start_soon(self._read)
                self._task_group.start_soon(self._guard)
        finally:
            await close_call(self.call)
        assert self.error is not None  # both tasks run until one of them fails
        return self.error

    def _fail(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error
        assert self._task_group is not None
        self._task_group.cancel_scope.cancel()

    async def _read(self) -> None:
        try:
            await self._send_create()
            await self._receive()
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                self.client.members.abandon(self.member, f"watch stream failed: {exc.details()}")
            self._fail(translate_error(exc))
        except asyncio.InvalidStateError:
            # A write to a stream that grpc already ended: its status says why.
            code = await self.call.code()
            self._fail(EtcdUnavailableError(f"the watch stream ended ({code})", code="UNAVAILABLE"))
        except Exception as exc:
            self._fail(exc)

    async def _send_create(self) -> None:
        timeout = self.client.timeout
        with anyio.move_on_after(timeout) as scope:
            await rpc_step(self.call.write(rpc.WatchRequest(create_request=self.create)))
        if scope.cancelled_caught:
            self.client.members.abandon(self.member, "no answer to a watch request")
            raise EtcdUnavailableError(
                f"etcd did not take the watch request within {timeout:g} s", code="UNAVAILABLE"
            )

    async def _receive(self) -> None:
        members = self.client.members
        while True:
            response = await rpc_step(self.call.read())
            if response is grpc.aio.EOF:
                self._fail(EtcdUnavailableError("etcd closed the watch stream", code="UNAVAILABLE"))
                return
            members.heard(self.member)
            self.handle(response)

    async def _guard(self) -> None:
        members = self.client.members
        member = self.member
        while True:
            quiet_until = member.last_heard + members.heartbeat
            with anyio.move_on_after(max(0.0, quiet_until - time.monotonic())):
                await self.abandoned.wait()
            if self.abandoned.is_set():
                self._fail(self._left("the client left its etcd member"))
                return
            if not self.probe_idle or time.monotonic() - member.last_heard < members.heartbeat:
                continue
            if not await members.alive(member):
                members.abandon(member, f"no answer within {members.heartbeat:g} s")
                self._fail(self._left("its etcd member stopped answering"))
                return

    def _left(self, why: str) -> EtcdError:
        return EtcdUnavailableError(
            f"watch stream on {self.member.url} closed: {why}", code="UNAVAILABLE"
        )


async def run_watch(
    client: Transport,
    create: rpc.WatchCreateRequest,
    handle: Callable[[rpc.WatchResponse], None],
    *,
    probe_idle: bool = True,
) -> None:
    """Open one watch stream and pass every response to ``handle`` until the stream ends.

    It never returns normally: it raises :class:`EtcdError` when the stream breaks, etcd closes
    it, the create request goes unanswered for the client's timeout, or the member stops
    answering; or whatever ``handle`` raises. The call is closed before it returns.

    ``probe_idle=False`` is for a watch whose owner already expects regular answers from the
    same member (a Registrar's keep-alive): the stream still leaves when the member is abandoned,
    but sends no probe of its own.
    """
    await client.connect()
    raise await _Stream(client, create, handle, probe_idle).run()
