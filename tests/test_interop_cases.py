"""gRPC's interop test cases, run through resolve() over three registered endpoints.

Each case follows ``doc/interop-test-descriptions.md`` in grpc/grpc (procedure and the
client's assertions), against this suite's TestService server (:mod:`tests.grpc_testing`).
They run once over a steady service, then in rounds while one endpoint deregisters and stops.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from types import ModuleType
from typing import Any

import anyio
import grpc
import grpc.aio
import pytest

from aiodiscovery import BalancedChannel, EtcdClient, Registrar, resolve

from .grpc_testing import ECHO_INITIAL, ECHO_TRAILING, TestServiceServer, compile_service
from .helpers import until

pytestmark = pytest.mark.anyio

_Code = grpc.StatusCode


@pytest.fixture(scope="session")
def protos(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModuleType, ModuleType]:
    return compile_service(tmp_path_factory.mktemp("grpc_testing"))


class Client:
    """The stubs one case needs, on the channel under test."""

    def __init__(self, channel: grpc.aio.Channel, pb2: ModuleType, pb2_grpc: ModuleType) -> None:
        self.pb2 = pb2
        self.test = pb2_grpc.TestServiceStub(channel)
        self.unimplemented = pb2_grpc.UnimplementedServiceStub(channel)

    def payload(self, size: int) -> Any:
        return self.pb2.Payload(body=bytes(size))

    def output_request(self, sizes: list[int], body: int = 0, **fields: Any) -> Any:
        parameters = [self.pb2.ResponseParameters(size=size) for size in sizes]
        return self.pb2.StreamingOutputCallRequest(
            response_parameters=parameters, payload=self.payload(body), **fields
        )


async def empty_unary(c: Client) -> None:
    reply = await c.test.EmptyCall(c.pb2.Empty())
    assert reply is not None
    assert reply == c.pb2.Empty()


async def large_unary(c: Client) -> None:
    request = c.pb2.SimpleRequest(response_size=314159, payload=c.payload(271828))
    reply = await c.test.UnaryCall(request)
    assert reply.payload.body == bytes(314159)


async def client_streaming(c: Client) -> None:
    call = c.test.StreamingInputCall()
    for size in (27182, 8, 1828, 45904):
        await call.write(c.pb2.StreamingInputCallRequest(payload=c.payload(size)))
    await call.done_writing()
    reply = await call
    assert reply.aggregated_payload_size == 74922
    assert await call.code() is _Code.OK


async def server_streaming(c: Client) -> None:
    sizes = [31415, 9, 2653, 58979]
    call = c.test.StreamingOutputCall(c.output_request(sizes))
    replies = [reply async for reply in call]
    assert [len(r.payload.body) for r in replies] == sizes
    assert await call.code() is _Code.OK


async def ping_pong(c: Client) -> None:
    call = c.test.FullDuplexCall()
    exchanges = [(31415, 27182), (9, 8), (2653, 1828), (58979, 45904)]
    for size, body in exchanges:
        await call.write(c.output_request([size], body))
        reply = await call.read()
        assert reply is not grpc.aio.EOF
        assert reply.payload.body == bytes(size)
    await call.done_writing()
    assert await call.read() is grpc.aio.EOF
    assert await call.code() is _Code.OK


async def empty_stream(c: Client) -> None:
    call = c.test.FullDuplexCall()
    await call.done_writing()
    assert [reply async for reply in call] == []
    assert await call.code() is _Code.OK


async def cancel_after_begin(c: Client) -> None:
    call = c.test.StreamingInputCall()
    assert call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert await call.code() is _Code.CANCELLED


async def cancel_after_first_response(c: Client) -> None:
    call = c.test.FullDuplexCall()
    await call.write(c.output_request([31415], 27182))
    reply = await call.read()
    assert reply.payload.body == bytes(31415)
    assert call.cancel()
    assert await call.code() is _Code.CANCELLED


async def timeout_on_sleeping_server(c: Client) -> None:
    call = c.test.FullDuplexCall(timeout=0.001)
    with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
        # The deadline may pass before or after the message leaves: either way it fails.
        await call.write(c.pb2.StreamingOutputCallRequest(payload=c.payload(27182)))
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await call.read()
    assert failure.value.code() is _Code.DEADLINE_EXCEEDED
    assert await call.code() is _Code.DEADLINE_EXCEEDED


async def _echo_status_both_ways(c: Client, message: str) -> None:
    status = c.pb2.EchoStatus(code=2, message=message)
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await c.test.UnaryCall(c.pb2.SimpleRequest(response_status=status))
    assert (failure.value.code(), failure.value.details()) == (_Code.UNKNOWN, message)
    call = c.test.FullDuplexCall()
    await call.write(c.pb2.StreamingOutputCallRequest(response_status=status))
    await call.done_writing()
    assert await call.code() is _Code.UNKNOWN
    assert await call.details() == message


async def status_code_and_message(c: Client) -> None:
    await _echo_status_both_ways(c, "test status message")


async def special_status_message(c: Client) -> None:
    await _echo_status_both_ways(
        c, "\t\ntest with whitespace\r\nand Unicode BMP ☺ and non-BMP 😈\t\n"
    )


async def unimplemented_method(c: Client) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await c.test.UnimplementedCall(c.pb2.Empty())
    assert failure.value.code() is _Code.UNIMPLEMENTED


async def unimplemented_service(c: Client) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await c.unimplemented.UnimplementedCall(c.pb2.Empty())
    assert failure.value.code() is _Code.UNIMPLEMENTED


async def custom_metadata(c: Client) -> None:
    metadata = ((ECHO_INITIAL, "test_initial_metadata_value"), (ECHO_TRAILING, b"\xab\xab\xab"))
    expected_initial = (ECHO_INITIAL, "test_initial_metadata_value")
    expected_trailing = (ECHO_TRAILING, b"\xab\xab\xab")
    request = c.pb2.SimpleRequest(response_size=314159, payload=c.payload(271828))
    unary = c.test.UnaryCall(request, metadata=metadata)
    assert (await unary).payload.body == bytes(314159)
    assert expected_initial in tuple(await unary.initial_metadata())
    assert expected_trailing in tuple(await unary.trailing_metadata())
    duplex = c.test.FullDuplexCall(metadata=metadata)
    await duplex.write(c.output_request([314159], 271828))
    await duplex.done_writing()
    assert [len(r.payload.body) async for r in duplex] == [314159]
    assert expected_initial in tuple(await duplex.initial_metadata())
    assert expected_trailing in tuple(await duplex.trailing_metadata())


CASES: list[Callable[[Client], Awaitable[None]]] = [
    empty_unary,
    large_unary,
    client_streaming,
    server_streaming,
    ping_pong,
    empty_stream,
    cancel_after_begin,
    cancel_after_first_response,
    timeout_on_sleeping_server,
    status_code_and_message,
    special_status_message,
    unimplemented_method,
    unimplemented_service,
    custom_metadata,
]


@contextlib.asynccontextmanager
async def service_servers(
    protos: tuple[ModuleType, ModuleType], count: int
) -> AsyncIterator[list[TestServiceServer]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(TestServiceServer(f"s{i}", *protos))
            for i in range(count)
        ]


async def open_channel(client: EtcdClient, service: str) -> BalancedChannel:
    # Every case's call goes to an endpoint of its own: round_robin over three.
    return await resolve(client, f"etcd:///{service}")


def test_every_case_of_the_descriptions_is_here() -> None:
    assert len(CASES) == len({case.__name__ for case in CASES}) == 14


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.__name__)
async def test_interop_case_through_resolve(
    client: EtcdClient,
    service: str,
    protos: tuple[ModuleType, ModuleType],
    case: Callable[[Client], Awaitable[None]],
) -> None:
    async with service_servers(protos, 3) as servers, contextlib.AsyncExitStack() as stack:
        for server in servers:
            await stack.enter_async_context(Registrar(client, service, server.address, ttl=5))
        async with await open_channel(client, service) as channel:
            # Once per endpoint: round_robin sends each run to the next one.
            for _ in servers:
                await case(Client(channel, *protos))


async def test_interop_cases_while_an_endpoint_deregisters_and_stops(
    client: EtcdClient, service: str, protos: tuple[ModuleType, ModuleType]
) -> None:
    async with service_servers(protos, 3) as servers, contextlib.AsyncExitStack() as stack:
        leaving, *staying = servers
        # Its own stack, closed mid-run: the registration ends, as a server's does on shutdown.
        registration = await stack.enter_async_context(contextlib.AsyncExitStack())
        await registration.enter_async_context(Registrar(client, service, leaving.address, ttl=5))
        for server in staying:
            await stack.enter_async_context(Registrar(client, service, server.address, ttl=5))
        channel = await stack.enter_async_context(await open_channel(client, service))
        rounds = [0, 0]
        stop = anyio.Event()

        async def run(worker: int) -> None:
            c = Client(channel, *protos)
            while not stop.is_set():
                for case in CASES:
                    await case(c)
                rounds[worker] += 1

        async with anyio.create_task_group() as tg:
            for worker in range(len(rounds)):
                tg.start_soon(run, worker)
            await until(lambda: min(rounds) >= 1, timeout=60)
            assert leaving.calls > 0
            # A well-behaved server leaves the registry first, then stops with a grace.
            await registration.aclose()
            await until(lambda: _left(channel, leaving.address))
            await leaving.server.stop(5)
            served = leaving.calls
            mark = sum(rounds)
            # Every case again, by both workers, with the endpoint gone.
            await until(lambda: min(rounds) >= 1 and sum(rounds) >= mark + 4, timeout=60)
            stop.set()
        assert leaving.calls == served
        assert all(s.calls > 0 for s in staying)


def _left(channel: BalancedChannel, address: str) -> bool:
    """Whether the pool sends no new call to ``address``."""
    sub = channel.statistics().subchannels.get(address)
    return sub is None or sub.draining
