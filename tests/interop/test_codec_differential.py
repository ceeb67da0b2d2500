"""Differential fuzz: our codec against Go's encoding/json, run by Go itself.

The decoder must give, for every input, Go's decision and Go's values: the Go program
``json.Unmarshal``\\ s each input into etcd's endpoint record and prints the error or Addr and
Metadata in an unambiguous form (numbers as float64 bits, strings as hex), which we compare with
``decode_endpoint``'s result printed the same way. The encoder must write the bytes Go's
``json.Marshal`` writes for the same value. Every disagreement is reported with a minimal input.

``AIODISCOVERY_FUZZ_COUNT`` and ``AIODISCOVERY_FUZZ_SEED`` run a bigger or another fuzz.
"""

from __future__ import annotations

import base64
import math
import os
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from aiodiscovery import DecodeError, Endpoint, decode_endpoint, encode_endpoint
from aiodiscovery._codec.decoder import RecordError, _decode_slow

from .fuzz import canon, fixed_inputs, generated_inputs, shrink
from .probe import as_go_1_22, run_batch

COUNT = int(os.environ.get("AIODISCOVERY_FUZZ_COUNT", "3000"))
SEED = int(os.environ.get("AIODISCOVERY_FUZZ_SEED", "20250601"))


def ours(data: bytes) -> str:
    """Our reading of ``data`` in the Go program's output format (error text aside)."""
    try:
        endpoint = decode_endpoint("k", data)
    except DecodeError:
        return "0"
    return f"1 {endpoint.addr.encode().hex()} {canon(endpoint.metadata)}"


def faithful_path_only(data: bytes) -> str:
    """The same, without the decoder's fast path: the faithful parser must agree on its own."""
    try:
        addr, metadata = _decode_slow(data)
    except RecordError:
        return "0"
    return f"1 {addr.encode().hex()} {canon(metadata)}"


def agree(go_line: str, our_line: str) -> bool:
    return go_line == our_line if go_line[0] == "1" else our_line == "0"


@pytest.mark.parametrize("read", [ours, faithful_path_only])
def test_decoder_reads_every_input_as_go_does(
    naming_probe: Path, read: Callable[[bytes], str]
) -> None:
    inputs = fixed_inputs() + list(generated_inputs(SEED, COUNT))
    go_lines = run_batch(naming_probe, "decode", inputs)
    assert len(go_lines) == len(inputs)
    accepted = sum(line[0] == "1" for line in go_lines)
    # The fuzz must exercise both outcomes in earnest.
    assert len(inputs) * 0.2 < accepted < len(inputs) * 0.8

    def disagreeing(batch: list[bytes]) -> list[bool]:
        answers = run_batch(naming_probe, "decode", batch)
        return [not agree(g, read(d)) for d, g in zip(batch, answers, strict=True)]

    bad = [d for d, g in zip(inputs, go_lines, strict=True) if not agree(g, read(d))]
    reports = []
    for data in sorted(bad, key=len)[:5]:
        small = shrink(data, disagreeing)
        (go_says,) = run_batch(naming_probe, "decode", [small])
        reports.append(f"input {small!r}\n  Go:  {go_says[:300]}\n  ours: {read(small)[:300]}")
    assert not bad, f"{len(bad)} of {len(inputs)} inputs read differently; smallest:\n" + (
        "\n".join(reports)
    )


# -- encoding ---------------------------------------------------------------------------------

_CHARS = [chr(c) for c in range(0x80)] + [
    "\x80",
    "\u00e9",
    "\u2028",
    "\u2029",
    "\ufeff",
    "\ufffd",
    "\uffff",
    "\u65e5",
    "\U0001f600",
    "\U0010ffff",
]


def _text(rng: random.Random) -> str:
    return "".join(rng.choice(_CHARS) for _ in range(rng.randrange(8)))


def _number(rng: random.Random) -> int | float:
    roll = rng.random()
    if roll < 0.3:
        # Integers Go's float64 holds exactly; beyond 2**53 see the test further down.
        return rng.randint(-(2**53), 2**53)
    if roll < 0.5:
        return rng.choice([0.0, -0.0, 1e21, 1e-6, 1e-7, 5e-324, 1.7976931348623157e308, 0.1])
    while True:
        value = rng.uniform(-1, 1) * 10.0 ** rng.randint(-330, 308)
        if math.isfinite(value):
            return value


def _value(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if depth > 3 or roll < 0.5:
        return rng.choice([None, True, False, _text(rng), _number(rng), _number(rng)])
    if roll < 0.75:
        return [_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {_text(rng): _value(rng, depth + 1) for _ in range(rng.randrange(4))}


def encoder_inputs(seed: int, count: int) -> list[Endpoint]:
    rng = random.Random(seed)
    endpoints = [Endpoint(_text(rng) or "a", _value(rng)) for _ in range(count)]
    endpoints.append(Endpoint("x", [math.ulp(0.0), 2.0**-1022, 123456789012345680.0, 1e20]))
    endpoints.append(Endpoint("<&>\u2028\b\f\x7f", {"\U0001f600": 1, "\uff21": 2, "z": 3}))
    return endpoints


def test_encoder_writes_the_bytes_go_writes(naming_probe: Path) -> None:
    endpoints = encoder_inputs(SEED, COUNT)
    ours_bytes = [encode_endpoint(e) for e in endpoints]
    go_lines = run_batch(naming_probe, "reencode", ours_bytes)
    different = []
    for endpoint, mine, line in zip(endpoints, ours_bytes, go_lines, strict=True):
        assert line.startswith("1 "), f"Go could not read what we wrote for {endpoint!r}: {line}"
        theirs = as_go_1_22(base64.b64decode(line[2:]))
        if theirs != mine:
            different.append(f"{endpoint!r}\n  Go:   {theirs!r}\n  ours: {mine!r}")
    assert not different, f"{len(different)} encodings differ:\n" + "\n".join(different[:5])


def test_large_integers_are_the_documented_difference(naming_probe: Path) -> None:
    # A Python int is written exactly, as Go writes an int64; Go's interface{} holds a float64,
    # so Go re-encodes what it read rounded, and our decoder reads the same float64.
    mine = encode_endpoint(Endpoint("a", [2**53 + 1, 10**21]))
    assert mine == b'{"Op":0,"Addr":"a","Metadata":[9007199254740993,1000000000000000000000]}'
    (line,) = run_batch(naming_probe, "reencode", [mine])
    assert base64.b64decode(line[2:]) == b'{"Op":0,"Addr":"a","Metadata":[9007199254740992,1e+21]}'
    assert decode_endpoint("k", mine).metadata == [9007199254740992.0, 1e21]


def test_the_go_1_22_normalisation_touches_only_b_and_f() -> None:
    assert as_go_1_22(rb'"\u0008\u000c\\u0008\u000b"') == rb'"\b\f\\u0008\u000b"'


# -- nesting under a raised recursion limit ---------------------------------------------------


def _nested(levels: int) -> list[bytes]:
    """Records whose deepest value sits ``levels`` deep, the record's own object counted, in
    the shapes the decoder's paths take: canonical, Op first, an unknown field, arrays, objects."""
    inner = levels - 1
    arrays = b"[" * inner + b"]" * inner
    objects = b'{"a":' * (inner - 1) + b"{}" + b"}" * (inner - 1)
    return [
        b'{"Addr":"a:1","Metadata":' + arrays + b"}",
        b'{"Op":0,"Addr":"a:1","Metadata":' + objects + b"}",
        b'{"Metadata":' + arrays + b',"Addr":"a:1"}',
        b'{"Addr":"a:1","Unknown":' + objects + b"}",
        # Brackets in strings are not nesting: only the faithful count tells them apart.
        b'{"Addr":"a:1","Metadata":["' + b"[" * 20_000 + b'",' + arrays[1:] + b"}",
    ]


def test_nesting_limit_holds_whatever_the_recursion_limit(naming_probe: Path) -> None:
    # Go's scanner refuses a document deeper than 10,000 levels; CPython's C scanner nests as
    # deep as sys.getrecursionlimit() allows, which applications raise.
    inputs = [data for levels in (9_999, 10_000, 10_001) for data in _nested(levels)]
    go_lines = run_batch(naming_probe, "decode", inputs)
    assert [line[0] for line in go_lines] == ["1"] * 10 + ["0"] * 5
    before = sys.getrecursionlimit()
    sys.setrecursionlimit(50_000)
    try:
        answers = [ours(data) for data in inputs]
    finally:
        sys.setrecursionlimit(before)
    assert [a[0] for a in answers] == [g[0] for g in go_lines]
    assert all(agree(g, a) for g, a in zip(go_lines, answers, strict=True))
