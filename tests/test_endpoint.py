"""The Go-compatible codec, updates and target parsing (no etcd needed)."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aiodiscovery import (
    DecodeError,
    Endpoint,
    Operation,
    Update,
    decode_endpoint,
    encode_endpoint,
    parse_target,
)


def test_encode_matches_go_byte_for_byte() -> None:
    assert encode_endpoint(Endpoint("1.2.3.4:50051")) == (
        b'{"Op":0,"Addr":"1.2.3.4:50051","Metadata":null}'
    )
    assert encode_endpoint(Endpoint("1.2.3.4", "...")) == (
        b'{"Op":0,"Addr":"1.2.3.4","Metadata":"..."}'
    )


def test_encode_reproduces_go_escapes_key_order_and_floats() -> None:
    metadata = {"z": 1, "a": [0.1, 1.0, 1e21, 1.5e-7, 123456789.0, -0.0], "h": "<a&b>\u2028é"}
    assert (
        encode_endpoint(Endpoint("x:1", metadata))
        == (
            '{"Op":0,"Addr":"x:1","Metadata":{"a":[0.1,1,1e+21,1.5e-7,123456789,-0],'
            '"h":"\\u003ca\\u0026b\\u003e\\u2028é","z":1}}'
        ).encode()
    )


def test_encode_rejects_what_json_cannot_hold() -> None:
    with pytest.raises(ValueError, match="JSON has no such number"):
        encode_endpoint(Endpoint("x:1", math.nan))
    with pytest.raises(TypeError, match="JSON-serialisable"):
        encode_endpoint(Endpoint("x:1", {1, 2}))
    with pytest.raises(TypeError, match="keys must be strings"):
        encode_endpoint(Endpoint("x:1", {1: "a"}))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b'{"Addr":"1.2.3.4","Metadata":"..."}', Endpoint("1.2.3.4", "...")),
        (b'{"Op":0,"Addr":"a:1","Metadata":null}', Endpoint("a:1")),
        (b'{"Op":1,"Addr":"a:1"}', Endpoint("a:1")),  # Op is ignored, as in Go
        (b'{"addr":"a:1","METADATA":{"weight":3}}', Endpoint("a:1", {"weight": 3})),
        (b'{"Addr":"a:1","Extra":[1,2],"Op":null}', Endpoint("a:1")),
        (b'{"Addr":"a:1","addr":"b:2"}', Endpoint("b:2")),  # a later duplicate wins
        (b'{"Addr":"a:1","Addr":null}', Endpoint("a:1")),  # null leaves the field alone
        (b'{"Addr":"a:1","Metadata":{}}', Endpoint("a:1", {})),
        (b'{"Addr":"a:1","Metadata":[]}', Endpoint("a:1", [])),
        (b'{"Addr":"a\xff:1"}', Endpoint("a\ufffd:1")),  # invalid UTF-8 reads as U+FFFD
    ],
)
def test_decode_accepts_what_go_accepts(value: bytes, expected: Endpoint) -> None:
    assert decode_endpoint("k", value) == expected


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"not json", "not JSON"),
        (b'"1.2.3.4"', "expected a JSON object, got str"),
        (b"[1]", "expected a JSON object, got list"),
        (b"{}", 'no "Addr" field'),
        (b'{"Metadata":1}', 'no "Addr" field'),
        (b'{"Addr":5}', '"Addr" must be a string, got int'),
        (b'{"Addr":{"a":1}}', '"Addr" must be a string, got dict'),
        (b'{"Addr":""}', '"Addr" is empty'),
        (b'{"Op":"add","Addr":"a:1"}', "Op must be an integer"),
        (b'{"Op":256,"Addr":"a:1"}', "Op must be an integer"),
        (b'{"Op":1.5,"Addr":"a:1"}', "Op must be an integer"),
        (b'{"Addr":"a:1","Metadata":NaN}', "not JSON"),
        (b'{"Addr":"a:1","Metadata":1e400}', "out of range"),
        (b'{"Addr":5,"Addr":"a:1"}', '"Addr" must be a string, got int'),
        (b"\xff\xfe", "not JSON"),
    ],
)
def test_decode_rejects_with_the_key_named(value: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode_endpoint("svc/bad-key", value)
    assert info.value.key == "svc/bad-key"
    assert reason in str(info.value)
    assert "svc/bad-key" in str(info.value)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


def as_go(value: Any) -> Any:
    """What Go's decoder makes of a JSON value: every number a float64."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, dict):
        return {k: as_go(v) for k, v in value.items()}
    return [as_go(v) for v in value]


@given(addr=st.text(min_size=1), metadata=json_values)
def test_round_trip_and_standard_json(addr: str, metadata: Any) -> None:
    encoded = encode_endpoint(Endpoint(addr, metadata))
    decoded = decode_endpoint("k", encoded)
    assert decoded.addr == addr
    # Go's number format is valid JSON that reads back to the same float64 Go would hold.
    assert as_go(decoded.metadata) == as_go(json.loads(json.dumps(metadata)))
    assert as_go(json.loads(encoded)["Metadata"]) == as_go(metadata)
    assert json.loads(encoded)["Op"] == 0


def test_endpoint_and_update_validate() -> None:
    with pytest.raises(ValueError, match="non-empty string"):
        Endpoint("")
    add = Update.add("s/k", Endpoint("a:1"), lease=7)
    assert (add.op, add.key, add.endpoint, add.lease) == (Operation.ADD, "s/k", Endpoint("a:1"), 7)
    delete = Update.delete("s/k")
    assert (delete.op, delete.endpoint, delete.lease) == (Operation.DELETE, None, 0)
    with pytest.raises(ValueError, match="lease"):
        Update.add("s/k", Endpoint("a:1"), lease=-1)
    with pytest.raises(ValueError, match="needs an endpoint"):
        Update(Operation.ADD, "s/k")


@pytest.mark.parametrize(
    ("target", "prefix"),
    [
        ("etcd:///foo/bar/my-service", "foo/bar/my-service/"),
        ("foo/bar/my-service", "foo/bar/my-service/"),
        ("etcd:///svc", "svc/"),
        ("etcd:////abs/svc", "/abs/svc/"),
        ("/abs/svc", "/abs/svc/"),
    ],
)
def test_parse_target(target: str, prefix: str) -> None:
    assert parse_target(target) == prefix


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("", "names no service"),
        ("etcd:///", "names no service"),
        ("foo/bar/", "ends with '/'"),
        ("etcd:///foo/", "ends with '/'"),
        ("dns:///foo", "scheme 'dns'"),
        ("etcd://host:2379/foo", "authority 'host:2379'"),
        ("etcd:foo", "must start with 'etcd:///'"),
        ("etcd:///foo?x=1", "query"),
        ("foo bar", "whitespace"),
    ],
)
def test_parse_target_rejects_with_a_clear_message(target: str, message: str) -> None:
    with pytest.raises(ValueError, match="valid target looks like") as info:
        parse_target(target)
    assert message in str(info.value)
