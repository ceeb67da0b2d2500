"""Reading a whole prefix at one revision, in pages that never outgrow a gRPC message."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass

from aetcd import rpc

from .._exceptions import EtcdError
from .transport import Transport

__all__ = ["KeyValue", "list_prefix", "prefix_pages", "prefix_range_end"]

# Aim for pages of about 2 MiB: half gRPC's default 4 MiB receive limit (a page sized on the
# values seen so far may meet bigger ones; one refused is asked for again in smaller parts), big
# enough that 100,000 endpoints take a handful of round trips. etcd's own request limit (1.5 MiB)
# keeps any one value smaller than a page.
_PAGE_BYTES = 2 << 20
_FIRST_PAGE = 1000
_MAX_PAGE = 20_000


@dataclass(frozen=True, slots=True)
class KeyValue:
    """A key, its raw value and lease, as etcd stores it.

    ``key`` is decoded from UTF-8 with ``surrogateescape``, so two different byte keys never
    become one string; :func:`valid_key` tells the ones that are proper UTF-8.
    """

    key: str
    value: bytes
    lease: int
    mod_revision: int


def decode_key(raw: bytes) -> str:
    """An etcd key as a string, one to one with its bytes (see :class:`KeyValue`)."""
    return raw.decode("utf-8", "surrogateescape")


def valid_key(key: str) -> bool:
    """Whether ``key`` came from valid UTF-8 (it holds no escaped byte)."""
    if key.isascii():
        return True
    try:
        key.encode()
    except UnicodeEncodeError:
        return False
    return True


def prefix_range_end(prefix: bytes) -> bytes:
    """The first key after every key that starts with ``prefix``."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


async def prefix_pages(
    client: Transport, prefix: str
) -> AsyncGenerator[tuple[int, Sequence[rpc.KeyValue]], None]:
    """Yield ``(revision, etcd key-values)`` page by page: every key under ``prefix``, all read
    at the revision of the first page.

    Pages are sized from the values seen so far, and a page the channel refuses as too large is
    asked for again in smaller parts, so a few big values never make the list fail forever.
    """
    start = prefix.encode()
    end = prefix_range_end(start)
    revision = 0
    limit = _FIRST_PAGE
    while True:
        request = rpc.RangeRequest(key=start, range_end=end, limit=limit, revision=revision)
        try:
            response = await client.unary(lambda m: m.kv.Range, request)
        except EtcdError as exc:
            if exc.code == "RESOURCE_EXHAUSTED" and limit > 1:
                limit = max(1, limit // 8)
                continue
            raise
        if not revision:
            revision = response.header.revision
        kvs = response.kvs
        yield revision, kvs
        if not response.more or not kvs:
            return
        # Sized by protobuf in C: a Python loop over 20,000 key-values costs milliseconds.
        size = response.ByteSize()
        limit = max(1, min(_MAX_PAGE, _PAGE_BYTES * len(kvs) // max(size, 1)))
        start = kvs[-1].key + b"\0"


async def list_prefix(client: Transport, prefix: str) -> tuple[int, list[KeyValue]]:
    """Read every key under ``prefix`` at one revision; return ``(revision, key-values)``.

    Read in pages that never outgrow a gRPC message (see :func:`prefix_pages`).
    """
    revision = 0
    result: list[KeyValue] = []
    async with contextlib.aclosing(prefix_pages(client, prefix)) as pages:
        async for revision, kvs in pages:  # noqa: B007 (the last page's is the list's)
            result += [
                KeyValue(decode_key(kv.key), kv.value, kv.lease, kv.mod_revision) for kv in kvs
            ]
    return revision, result
