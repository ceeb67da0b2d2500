"""Inputs for the differential fuzz of the endpoint codec, and the value form both sides print.

The generator is seeded and plain Python (no hypothesis): thousands of inputs go to one Go process
in one batch, so the whole fuzz takes seconds. It writes valid records in many spellings and then
breaks them in the ways that matter to Go's decoder: field-name case and escapes, duplicates,
nulls, Op edge values, surrogates, invalid UTF-8, huge and tiny numbers, deep nesting, whitespace,
truncation and trailing garbage.
"""

from __future__ import annotations

import json
import random
import struct
from collections.abc import Callable, Iterator
from typing import Any

# Strings worth having in addresses, keys and metadata.
_ATOMS = [
    "",
    "10.0.0.1:50051",
    "[::1]:443",
    "a<b>&c",
    "é",
    "日本",
    "\U0001f600",
    "\u2028\u2029",
    "\x00\x01\x08\x0c\x1f\x7f",
    '"\\/',
    "\ufffd",
    "\ufeff",
    "K\u212a\u017fs",  # Kelvin sign and long s: the runes Go folds onto ASCII letters
    "Addr",
    "addr",
    "Metadata",
    "Op",
]
_NUMBERS = [
    "0",
    "-0",
    "1",
    "-1",
    "255",
    "256",
    "1.0",
    "-0.0",
    "0.1",
    "1e2",
    "1E+2",
    "1e-2",
    "1.5e-7",
    "123456789.123456789",
    "9007199254740993",
    "-9007199254740993",
    "18446744073709551615",
    "18446744073709551616",
    "1e308",
    "1.7976931348623157e308",
    "1.7976931348623158e308",
    "1.7976931348623159e308",
    "1e309",
    "-1e400",
    "1e-400",
    "4.9e-324",
    "2.4703282292062328e-324",
    "0." + "0" * 400 + "1",
    "1" * 309,
    "1" * 310,
    "9" * 5000,
    "1" + "0" * 400 + "e-100",
    "0.30000000000000004",
    "1e21",
    "1e20",
    "100000000000000000000",
]
_NAMES = {
    "Op": ["Op", "op", "OP", "oP", "\\u004fp", "O\\u0070", "Op ", "\u039fp"],
    "Addr": ["Addr", "addr", "ADDR", "aDdR", "\\u0041ddr", "Addr\\u0000", "Adr", "\uff21ddr"],
    "Metadata": ["Metadata", "metadata", "METADATA", "MetaData", "Meta\\u0064ata", "Metadatum"],
}
_OPS = ["0", "1", "255", "256", "-0", "-1", "1.0", "1e2", "0.5", '"0"', "true", "null", "[]", "{}"]
_INTERESTING_BYTES = (
    b'{}[]:,"\\ \t\n\r0-e.nulltrufas\x00\x1f\x7f\x80\xbf\xc0\xc2\xe2\xed\xf0\xf4\xf5\xff'
)
_ESCAPES = [
    "\\n",
    "\\t",
    "\\b",
    "\\f",
    "\\/",
    '\\"',
    "\\\\",
    "\\u0000",
    "\\u003c",
    "\\u00e9",
    "\\u2028",
    "\\ud800",
    "\\udbff\\udfff",
    "\\ud83d\\ude00",
    "\\udc00",
    "\\udc00\\ud800",
    "\\ud800\\ud800\\udc00",
    "\\ud800x",
    "\\uD800\\uDC00",
    "\\uFFFF",
]
_RAW_BYTES = [
    b"\xff",
    b"\xe2\x82",
    b"\xed\xa0\x80",
    b"\xc0\xaf",
    b"\xf4\x90\x80\x80",
    b"\xe2\x82\xac",
]


class _Gen:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def string_body(self) -> bytes:
        """The bytes between the quotes of a JSON string, escapes and raw bytes included."""
        rng = self.rng
        parts: list[bytes] = []
        for _ in range(rng.randrange(4)):
            kind = rng.random()
            if kind < 0.5:
                text = rng.choice(_ATOMS)
                parts.append(json.dumps(text, ensure_ascii=rng.random() < 0.3)[1:-1].encode())
            elif kind < 0.8:
                parts.append(rng.choice(_ESCAPES).encode())
            else:
                parts.append(rng.choice(_RAW_BYTES))
        return b"".join(parts)

    def string(self) -> bytes:
        return b'"' + self.string_body() + b'"'

    def number(self) -> bytes:
        rng = self.rng
        if rng.random() < 0.6:
            return rng.choice(_NUMBERS).encode()
        value = rng.choice([rng.randint(-(2**70), 2**70), rng.uniform(-1e6, 1e6)])
        if isinstance(value, float) and rng.random() < 0.5:
            value *= 10.0 ** rng.randint(-320, 300)
        return json.dumps(value).encode()

    def space(self) -> bytes:
        if self.rng.random() < 0.8:
            return b""
        return bytes(self.rng.choice(b" \t\n\r") for _ in range(self.rng.randrange(1, 3)))

    def value(self, depth: int = 0) -> bytes:
        rng = self.rng
        kind = rng.random()
        if depth > 4 or kind < 0.45:
            choice = rng.randrange(4)
            if choice == 0:
                return self.string()
            if choice == 1:
                return self.number()
            return rng.choice([b"true", b"false", b"null"])
        items = [self.value(depth + 1) for _ in range(rng.randrange(4))]
        if kind < 0.7:
            return b"[" + b",".join(self.space() + i + self.space() for i in items) + b"]"
        members = [self.string() + self.space() + b":" + self.space() + i for i in items]
        return b"{" + b",".join(members) + b"}"

    def field(self, name: str) -> bytes:
        rng = self.rng
        spelled = rng.choice(_NAMES[name]) if rng.random() < 0.3 else name
        if name == "Op":
            value = rng.choice(_OPS).encode() if rng.random() < 0.5 else b"0"
        elif name == "Addr":
            roll = rng.random()
            value = self.string() if roll < 0.85 else b"null" if roll < 0.93 else self.value()
        else:
            value = self.value()
        return b'"' + spelled.encode() + b'"' + self.space() + b":" + self.space() + value

    def record(self) -> bytes:
        rng = self.rng
        if rng.random() < 0.3:
            # The shape Go and we write, which the decoder's fast path takes.
            op = rng.choice([b'"Op":0,', b'"Op":1,', b"", b'"Op":255,', b'"Op":256,'])
            addr = self.string() if rng.random() < 0.5 else b'"10.0.0.1:50051"'
            return b"{" + op + b'"Addr":' + addr + b',"Metadata":' + self.value() + b"}"
        fields = [self.field(n) for n in ("Op", "Addr", "Metadata") if rng.random() < 0.9]
        for _ in range(rng.choice([0, 0, 1, 2])):
            if rng.random() < 0.5 and fields:
                fields.insert(rng.randrange(len(fields) + 1), rng.choice(fields))  # duplicate
            elif rng.random() < 0.5:
                fields.append(self.field(rng.choice(["Op", "Addr", "Metadata"])))
            else:
                fields.insert(0, self.string() + b":" + self.value())  # unknown field
        body = b",".join(self.space() + f + self.space() for f in fields)
        return self.space() + b"{" + body + b"}" + self.space()

    def mutate(self, data: bytes) -> bytes:
        rng = self.rng
        if not data:
            return bytes([rng.choice(_INTERESTING_BYTES)])
        at = rng.randrange(len(data) + 1)
        roll = rng.random()
        if roll < 0.3:
            return data[:at] + data[at + 1 :]
        if roll < 0.6:
            return data[:at] + bytes([rng.choice(_INTERESTING_BYTES)]) + data[at:]
        if roll < 0.75:
            return data[:at]
        if roll < 0.85:
            span = data[at : at + rng.randrange(1, 8)]
            return data[:at] + span + data[at:]
        return data + rng.choice([b"x", b" ", b"}", b"{}", b"null", b"\x00"])


def deep(levels: int, opening: bytes = b"[", closing: bytes = b"]", inner: bytes = b"") -> bytes:
    """A record whose Metadata nests ``levels`` containers (the record adds one more level)."""
    return b'{"Addr":"deep","Metadata":' + opening * levels + inner + closing * levels + b"}"


def fixed_inputs() -> list[bytes]:
    """Hand-picked edge cases, always part of the fuzz."""
    cases = [
        b"",
        b"null",
        b" null ",
        b"{}",
        b"[]",
        b'"x"',
        b"0",
        b"true",
        b"nul",
        b"\xef\xbb\xbf{}",
        b'{"Addr":""}',
        b'{"Addr":null}',
        b'{"Metadata":{"x":1}}',
        b'{"Addr":"\\ud800:1"}',
        b'{"Addr":"a","Metadata":{"\\ud800":1,"\\udc00":2}}',
        b'{"Addr":"a\xe2\x82:1"}',
        b'{"Addr":"\xed\xa0\x80"}',
        b'{"Addr":"a","Metadata":1e400}',
        b'{"Addr":"a","Unknown":1e400,"More":' + b"9" * 5000 + b"}",
        b'{"Op":-0,"Addr":"a"}',
        b'{"Op":1.0,"Addr":"a"}',
        b'{"Op":256,"Addr":"a"}',
        b'{"Addr":"a","Metadata":' + b"1" * 400 + b"}",
        b'{"Addr":"a","Metadata":1,"metadata":null}',
        b'{"Addr":"a","Metadata":{"k":[1e400],"k":null}}',
        b'{"Addr":"a","Metadata":[{"k":1e309,"k":1}],"x":1e400}',
        b'{"Addr":"a","addr":null}',
        b'{"Addr":5,"Addr":"a"}',
        b'{"Addr":"a"}x',
        b'{"Addr":"a"}\t\r\n ',
        b'{"Addr":"a",}',
        b'{"Addr":"a\x1f"}',
        b'{"Addr":"a\x7f"}',
        b'{"\xff":1,"Addr":"a"}',
        b'{"Addr":"a","Metadata":-0}',
        b'{"Addr":"a","Metadata":[1.0,-0.0,0e5,-0e-5]}',
    ]
    for levels in (100, 998, 999, 1000, 5000, 9998, 9999, 10000, 10001):
        cases.append(deep(levels))
        cases.append(deep(levels, b'{"a":', b"}", b"1"))
    cases.append(b"[" * 10001 + b"]" * 10001)
    cases.append(b'{"Addr":"a","x":' + b"[" * 10000 + b"]" * 10000 + b"}")
    return cases


def generated_inputs(seed: int, count: int) -> Iterator[bytes]:
    """``count`` inputs: records in many spellings, and mutations of them."""
    gen = _Gen(random.Random(seed))
    for _ in range(count):
        data = gen.record()
        roll = gen.rng.random()
        if roll < 0.35:
            for _ in range(gen.rng.randrange(1, 4)):
                data = gen.mutate(data)
        yield data


def canon(value: Any) -> str:
    """A value as the Go program prints a Go value: numbers as float64 bits, strings as hex.

    An exact Python int becomes the float64 Go would hold (the one documented difference), so the
    comparison is exact otherwise. Iterative: metadata may nest 10,000 deep.
    """
    out: list[str] = []
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, _Raw):
            out.append(item.text)
        elif item is None:
            out.append("n")
        elif item is True or item is False:
            out.append("t" if item else "f")
        elif isinstance(item, int | float):
            bits = struct.unpack(">Q", struct.pack(">d", float(item)))[0]
            out.append(f"d{bits:016x}")
        elif isinstance(item, str):
            out.append("s" + item.encode().hex() + ".")
        elif isinstance(item, list):
            out.append("[")
            stack.append(_Raw("]"))
            for i in reversed(range(len(item))):
                stack.append(item[i])
                if i:
                    stack.append(_Raw(","))
        else:
            out.append("{")
            stack.append(_Raw("}"))
            keys = sorted(item, key=lambda k: k.encode())
            for i in reversed(range(len(keys))):
                stack.append(item[keys[i]])
                stack.append(_Raw(("," if i else "") + keys[i].encode().hex() + ":"))
    return "".join(out)


class _Raw:
    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def shrink(
    data: bytes, disagrees: Callable[[list[bytes]], list[bool]], *, rounds: int = 40
) -> bytes:
    """A smaller input that still disagrees: drop chunks while ``disagrees`` says so.

    ``disagrees`` takes a batch of candidates and answers for each, so each round is one batch
    through the Go program; ``rounds`` bounds the work on a large input.
    """
    chunk = max(1, len(data) // 2)
    for _ in range(rounds):
        candidates = [data[:i] + data[i + chunk :] for i in range(0, len(data), chunk)][:2000]
        verdicts = disagrees(candidates) if candidates else []
        smaller = next((c for c, bad in zip(candidates, verdicts, strict=True) if bad), None)
        if smaller is not None:
            data = smaller
            chunk = min(chunk, max(1, len(data) // 2))
        elif chunk == 1:
            break
        else:
            chunk //= 2
    return data
