"""BalancedChannel's life cycle: opening, closing, and a channel nobody closed."""

from __future__ import annotations

import asyncio
import gc
import weakref
from typing import Any

import anyio
import anyio.lowlevel
import grpc
import grpc.aio
import pytest

from aiodiscovery import BalancedChannel, EtcdClient, resolve

from .helpers import until
from .servers import method
from .test_pool import call, echo_servers, ready, registered, resolve_holding

pytestmark = pytest.mark.anyio


def pool_tasks() -> set[asyncio.Task[Any]]:
    return {t for t in asyncio.all_tasks() if t.get_name().startswith("aiodiscovery pool")}


async def test_async_with_opens_a_channel_built_directly(client: EtcdClient, service: str) -> None:
    async with echo_servers(1) as [server], registered(client, service, [server]):
        async with BalancedChannel(client, f"etcd:///{service}") as channel:
            await ready(channel, 1)
            assert await call(channel) == b"s0:x"
        assert channel.get_state() is grpc.ChannelConnectivity.SHUTDOWN
        with pytest.raises(grpc.aio.UsageError, match="closed"):
            async with channel:
                pass
    # Entering a channel resolve() opened does not open it twice.
    before = pool_tasks()
    async with await resolve(client, service) as channel:
        assert len(pool_tasks() - before) == 1


async def test_no_call_is_accepted_once_close_has_begun(client: EtcdClient, service: str) -> None:
    async with echo_servers(1) as [server], registered(client, service, [server]):
        channel, held = await resolve_holding(client, service, server)
        async with anyio.create_task_group() as tg:
            tg.start_soon(channel.close, 30)
            # close() has run up to its first wait (the held call has 30 s of grace).
            await anyio.lowlevel.checkpoint()
            for kwargs in ({}, {"wait_for_ready": True}):
                with pytest.raises(grpc.aio.UsageError, match="closed"):
                    channel.unary_unary(method("Unary"))(b"late", **kwargs)
            # The call in flight still gets its grace.
            server.release.set()
            assert await held == b"s0:h"
        assert server.calls == 1
        assert channel.get_state() is grpc.ChannelConnectivity.SHUTDOWN


async def test_an_unclosed_channel_warns_and_is_released(client: EtcdClient, service: str) -> None:
    async with echo_servers(1) as [server], registered(client, service, [server]):
        before = pool_tasks()
        channel = await resolve(client, service)
        await ready(channel, 1)
        stub = channel.unary_unary(method("Unary"))
        assert await stub(b"x") == b"s0:x"
        (task,) = pool_tasks() - before
        collected = weakref.ref(channel)
        with pytest.warns(ResourceWarning, match=f"unclosed BalancedChannel '{service}'"):
            del channel
            gc.collect()
        assert collected() is None
        # Its task ends, and with it the etcd watch and the subchannels.
        await until(task.done)
        assert not task.cancelled() and task.exception() is None
        # As with grpc.aio: a stub that outlives its channel finds it closed.
        with pytest.raises(grpc.aio.UsageError, match="closed"):
            stub(b"x")
