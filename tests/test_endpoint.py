"""The Go-compatible codec, attributes, updates and target parsing (no etcd needed).

The expected decodings below are Go's own answers (``json.Unmarshal`` into etcd's record, checked
with tests/interop/naming_probe.go); tests/interop/test_codec_differential.py fuzzes the rest.
"""

from __future__ import annotations

import contextlib
import enum
import json
import math
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from aiodiscovery import (
    DecodeError,
    Endpoint,
    Operation,
    Update,
    decode_endpoint,
    encode_endpoint,
    encode_metadata,
    parse_target,
)
from aiodiscovery._codec.decoder import (
    MAX_DEPTH,
    RecordError,
    _decode_canonical,
    _decode_fast,
    _decode_slow,
    decode_record,
)
from aiodiscovery._codec.encoder import go_json
from aiodiscovery._codec.endpoint import (
    encode_attributes,
    metadata_attributes,
    metadata_weight,
)
from aiodiscovery._codec.jsonvalue import json_equal, safe_repr

# What Go's Manager.List returns for a value without an address; Endpoint("") itself refuses.
EMPTY = Endpoint._decoded("", None)


def deep_list(levels: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(levels - 1):
        value = [value]
    return value


# ---------------------------------------------------------------------------------------------
# Encoding


def test_encode_matches_go_byte_for_byte() -> None:
    assert encode_endpoint(Endpoint("1.2.3.4:50051")) == (
        b'{"Op":0,"Addr":"1.2.3.4:50051","Metadata":null}'
    )
    assert encode_endpoint(Endpoint("1.2.3.4", "...")) == (
        b'{"Op":0,"Addr":"1.2.3.4","Metadata":"..."}'
    )
    assert encode_endpoint(EMPTY) == b'{"Op":0,"Addr":"","Metadata":null}'


def test_encode_reproduces_go_escapes_key_order_and_floats() -> None:
    metadata = {"z": 1, "a": [0.1, 1.0, 1e21, 1.5e-7, 123456789.0, -0.0], "h": "<a&b>\u2028é"}
    assert (
        encode_endpoint(Endpoint("x:1", metadata))
        == (
            '{"Op":0,"Addr":"x:1","Metadata":{"a":[0.1,1,1e+21,1.5e-7,123456789,-0],'
            '"h":"\\u003ca\\u0026b\\u003e\\u2028é","z":1}}'
        ).encode()
    )


def test_encode_writes_control_characters_as_go_1_22() -> None:
    # Go 1.22+ writes \b and \f short (before: \u0008, \u000c); DEL and U+2029 as Go does.
    text = '\b\f\n\r\t\x00\x1f\x7f\u2029"\\/'
    assert go_json(text) == '"\\b\\f\\n\\r\\t\\u0000\\u001f\x7f\\u2029\\"\\\\/"'


def test_encode_sorts_keys_by_utf8_bytes() -> None:
    # Code point order is UTF-8 byte order: U+FF21 sorts after U+00E9 and after "z".
    assert go_json({"\uff21": 1, "z": 2, "é": 3, "A": 4}) == '{"A":4,"z":2,"é":3,"\uff21":1}'


def test_encode_numbers_like_go() -> None:
    class Flag(enum.IntEnum):
        ON = 1

    assert go_json([Flag.ON, True, 2**53 + 1, 5e-324, 1e20, 1e-6, 1e-7]) == (
        "[1,true,9007199254740993,5e-324,100000000000000000000,0.000001,1e-7]"
    )
    assert go_json((1, "a")) == '[1,"a"]'


@pytest.mark.parametrize(
    ("metadata", "error", "message"),
    [
        (math.nan, ValueError, "JSON has no such number"),
        ([math.inf], ValueError, "JSON has no such number"),
        (10**400, ValueError, "beyond float64's range"),
        ({"k": "\ud800"}, ValueError, "lone surrogate"),
        ({"\udfff": 1}, ValueError, "lone surrogate"),
        ({1, 2}, TypeError, "JSON-serialisable"),
        ({1: "a"}, TypeError, "keys must be strings"),
    ],
)
def test_encode_refuses_what_go_could_not_read(
    metadata: Any, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        encode_endpoint(Endpoint("x:1", metadata))


def test_encode_refuses_a_lone_surrogate_in_the_address() -> None:
    with pytest.raises(ValueError, match="lone surrogate"):
        encode_endpoint(Endpoint("\ud800:1"))


def test_encode_refuses_cycles_and_nesting_past_go_limit() -> None:
    cycle: list[Any] = []
    cycle.append(cycle)
    with pytest.raises(ValueError, match="reference cycle"):
        encode_endpoint(Endpoint("x:1", {"a": cycle}))
    shared = [1]
    assert go_json([shared, shared]) == "[[1],[1]]"  # shared, not a cycle
    # The record is one level: metadata may nest MAX_DEPTH - 1 levels, as Go reads.
    deepest = deep_list(MAX_DEPTH - 1)
    encoded = encode_endpoint(Endpoint("x:1", deepest))
    assert decode_endpoint("k", encoded) == Endpoint("x:1", deepest)
    with pytest.raises(ValueError, match="nested deeper than Go reads"):
        encode_endpoint(Endpoint("x:1", [deepest]))


# ---------------------------------------------------------------------------------------------
# Decoding: Go's answers


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b'{"Addr":"1.2.3.4","Metadata":"..."}', Endpoint("1.2.3.4", "...")),
        (b'{"Op":0,"Addr":"a:1","Metadata":null}', Endpoint("a:1")),
        (b'{"Op":1,"Addr":"a:1"}', Endpoint("a:1")),  # Op is ignored, as in Go
        (b'{"Op":255,"Addr":"a:1"}', Endpoint("a:1")),
        (b'{"addr":"a:1","METADATA":{"weight":3}}', Endpoint("a:1", {"weight": 3})),
        (b'{"Addr":"a:1","Extra":[1,2],"Op":null}', Endpoint("a:1")),
        (b'{"Addr":"a:1","addr":"b:2"}', Endpoint("b:2")),  # a later duplicate wins
        (b'{"Addr":"a:1","Addr":null}', Endpoint("a:1")),  # null leaves a string alone
        (b'{"Addr":"a","Metadata":1,"metadata":null}', Endpoint("a")),  # but resets Metadata
        (b'{"\\u0041ddr":"esc"}', Endpoint("esc")),  # names are matched after unescaping
        (b'{"Addr":"a:1","Metadata":{}}', Endpoint("a:1", {})),
        (b'{"Addr":"a:1","Metadata":[]}', Endpoint("a:1", [])),
        # What Go's Manager.List returns for values with no usable address:
        (b"{}", EMPTY),
        (b"null", EMPTY),
        (b" null\n", EMPTY),
        (b'{"Addr":""}', EMPTY),
        (b'{"Addr":null}', EMPTY),
        (b'{"Metadata":{"x":1}}', Endpoint._decoded("", {"x": 1})),
        # Unknown fields may hold any valid JSON, numbers Go could not convert included.
        (b'{"Addr":"a","X":1e400,"Y":' + b"9" * 5000 + b"}", Endpoint("a")),
        # Invalid UTF-8: one U+FFFD per bad byte; lone surrogate escapes: U+FFFD.
        (b'{"Addr":"a\xff:1"}', Endpoint("a\ufffd:1")),
        (b'{"Addr":"a\xe2\x82:1"}', Endpoint("a\ufffd\ufffd:1")),
        (b'{"Addr":"\xed\xa0\x80"}', Endpoint("\ufffd\ufffd\ufffd")),
        (b'{"Addr":"\\ud800:1"}', Endpoint("\ufffd:1")),
        (b'{"Addr":"\\ud83d\\ude00\\udc00\\ud800"}', Endpoint("\U0001f600\ufffd\ufffd")),
        # Colliding metadata keys merge, the last one wins.
        (b'{"Addr":"a","Metadata":{"\\ud800":1,"\\udc00":2}}', Endpoint("a", {"\ufffd": 2})),
        (b'{"Addr":"a","Metadata":[-0,1e-400,1.7976931348623158e308,9007199254740993]}', None),
    ],
)
def test_decode_accepts_what_go_accepts(value: bytes, expected: Endpoint | None) -> None:
    decoded = decode_endpoint("k", value)
    if expected is None:
        zero, tiny, biggest, rounded = decoded.metadata
        assert math.copysign(1, zero) == -1 and tiny == 0 and biggest == 1.7976931348623157e308
        assert rounded == 2**53 and isinstance(rounded, float)  # Go's float64, not 2**53 + 1
    else:
        assert decoded == expected


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"", "not JSON: Expecting value at 0"),
        (b"not json", "not JSON"),
        (b'"1.2.3.4"', "expected a JSON object, got string"),
        (b"[1]", "expected a JSON object, got array"),
        (b"1e400", "expected a JSON object, got number"),
        (b'{"Addr":5}', '"Addr" must be a string, got number'),
        (b'{"Addr":{"a":1}}', '"Addr" must be a string, got object'),
        (b'{"Addr":5,"Addr":"a:1"}', '"Addr" must be a string, got number'),
        (b'{"Op":"add","Addr":"a:1"}', "Op must be an integer 0..255, got string"),
        (b'{"Op":256,"Addr":"a:1"}', "got 256"),
        (b'{"Op":1.0,"Addr":"a:1"}', "got 1.0"),
        (b'{"Op":-0,"Addr":"a:1"}', "got -0"),
        (b'{"Op":' + b"9" * 5000 + b',"Addr":"a:1"}', "(5000 chars)"),
        (b'{"Addr":"a:1","Metadata":NaN}', "not JSON"),
        (b'{"Addr":"a:1","Metadata":1e400}', "beyond float64's range"),
        (b'{"Addr":"a:1","Metadata":[' + b"1" * 310 + b"]}", "beyond float64's range"),
        (b'{"Addr":"a:1","Metadata":1e400,"Metadata":1}', "beyond float64's range"),
        # Go fails converting the number even where a later duplicate key replaces it.
        (b'{"Addr":"a:1","Metadata":{"k":[1e400],"k":null}}', "beyond float64's range"),
        (b'{"Addr":"a:1"} x', "not JSON: Extra data at 15"),
        (b'{"Addr":"a:1"}{}', "not JSON: Extra data at 14"),
        (b'{"Addr":"a\x01"}', "not JSON"),
        (b'{"Addr":"\\x"}', "not JSON"),
        # CPython words this one by version ("Expecting property name ...", 3.13: "Illegal
        # trailing comma ..."): only our part of the message is ours to check.
        (b'{"Addr":"a",}', "not JSON: "),
        (b'{"Addr" "a"}', "not JSON"),
        (b'{"Addr":01}', "not JSON"),
        (b"\xef\xbb\xbf{}", "not JSON"),  # Go refuses a byte order mark
        (b"\xff\xfe", "not JSON"),
    ],
)
def test_decode_rejects_as_go_does_with_the_key_named(value: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode_endpoint("svc/bad-key", value)
    assert info.value.key == "svc/bad-key"
    assert reason in str(info.value)
    assert "svc/bad-key" in str(info.value)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"", "not JSON: unexpected end of input"),
        (b'{"Addr":"a:1"', "not JSON: unexpected end of input"),
        (b'{"Addr":"a:1"} x', "not JSON: unexpected b'x' at 15"),
        (b'{"Addr":"a:1"}{}', "not JSON: data after the top-level value at 14"),
        (b'{"Addr":"a",}', "not JSON: unexpected '}' at 12"),
        (b'{"Addr" "a"}', "not JSON: unexpected value at 8"),
        (b'{"Addr":"a":1}', "not JSON: unexpected ':' at 11"),
        (b'{"Addr",1}', "not JSON: unexpected ',' at 7"),
        (b"{1:2}", "not JSON: expected a string object key at 1"),
        (b"[1}", "not JSON: unexpected '}' at 2"),
        (b'{"Addr":NaN}', "not JSON: unexpected b'N' at 8"),
    ],
)
def test_faithful_path_names_syntax_errors(value: bytes, reason: str) -> None:
    # The fast path words syntax errors as Python's json does; the faithful one as above.
    with pytest.raises(RecordError) as info:
        _decode_slow(value)
    assert str(info.value) == reason


def test_decode_nests_to_go_limit_and_no_further() -> None:
    # Go counts the record's own object: Metadata may nest MAX_DEPTH - 1 containers.
    ok = b'{"Addr":"a","Metadata":' + b"[" * (MAX_DEPTH - 1) + b"]" * (MAX_DEPTH - 1) + b"}"
    assert json_equal(decode_endpoint("k", ok).metadata, deep_list(MAX_DEPTH - 1))
    for too_deep in (
        b'{"Addr":"a","Metadata":' + b"[" * MAX_DEPTH + b"]" * MAX_DEPTH + b"}",
        b'{"Addr":"a","Unknown":' + b'{"a":' * MAX_DEPTH + b"1" + b"}" * MAX_DEPTH + b"}",
        b"[" * 100_000,
    ):
        with pytest.raises(DecodeError, match="nested deeper than 10000 levels"):
            decode_endpoint("k", too_deep)


# ---------------------------------------------------------------------------------------------
# Decoding: total, and the fast path agrees with the faithful one


def decode_outcome(data: bytes) -> tuple[str, Any]:
    try:
        return ("ok", decode_record(data))
    except RecordError as exc:
        return ("error", str(exc))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
@example(b"\x00")
@example(b"[" * 20_000)
@example(b'{"Addr":"\\ud800"}')
def test_decoder_is_total_on_arbitrary_bytes(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode_endpoint("k", data)


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
_SPLICES = [
    b"\\ud800",
    b"\\udc00\\ud800",
    b"\\ud83d\\ude00",
    b"\xff",
    b"\xed\xa0\x80",
    b"-0",
    b"1e400",
    b"9" * 400,
    b"null",
    b" ",
    b'"ADDR":',
    b'"op":',
    b'"Metadata":null,',
    b'"Addr":"x",',
    b'"Addr":5,',
    b'"Op":300,',
    b'"Op":-0,',
    b'"Op":1e2,',
    b'"x":1e400,',
    b"[" * 1100,
    b"]" * 1100,
    b"}",
    b",",
]


@st.composite
def record_bytes(draw: st.DrawFn) -> bytes:
    """Records as Go writes them, then spliced with what trips decoders."""
    metadata = draw(json_values)
    data = json.dumps({"Op": 0, "Addr": draw(st.text()), "Metadata": metadata}).encode()
    data = data.replace(b": ", b":").replace(b", ", b",") if draw(st.booleans()) else data
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.sampled_from(_SPLICES)) + data[at:]
    return data


def by_path(decode: Any, data: bytes) -> Any:
    try:
        return decode(data)
    except RecordError as exc:
        return exc


@settings(max_examples=200, deadline=None)
@given(record_bytes())
def test_decoder_is_total_and_fast_path_matches_faithful_path(data: bytes) -> None:
    slow = by_path(_decode_slow, data)
    for fast_path in (_decode_canonical, _decode_fast):
        fast = by_path(fast_path, data)
        if isinstance(fast, RecordError):
            assert isinstance(slow, RecordError)
        elif fast is not None:
            assert not isinstance(slow, RecordError)
            assert fast[0] == slow[0]
            assert json_equal(fast[1], slow[1])
            assert safe_repr(fast[1]) == safe_repr(slow[1])  # same types too (int stays int)
    assert decode_outcome(data)[0] == ("error" if isinstance(slow, RecordError) else "ok")


@given(addr=st.text(min_size=1), metadata=json_values)
def test_round_trip_and_standard_json(addr: str, metadata: Any) -> None:
    try:
        encoded = encode_endpoint(Endpoint(addr, metadata))
    except ValueError as exc:
        # Python strings may hold lone surrogates; no Go string can.
        assert "lone surrogate" in str(exc)
        assert "\\ud" in json.dumps([addr, metadata])
        return
    decoded = decode_endpoint("k", encoded)
    # Go reads every number as a float64, and so do we (an integer float64 holds exactly comes
    # back as an int of the same value).
    assert decoded == Endpoint(addr, as_go(metadata))
    assert encode_endpoint(decode_endpoint("k", encode_endpoint(decoded))) == encode_endpoint(
        decoded
    )
    # Go's number format is valid JSON that reads back to the same float64 Go would hold.
    assert as_go(json.loads(encoded)["Metadata"]) == as_go(metadata)
    assert json.loads(encoded)["Op"] == 0


def as_go(value: Any) -> Any:
    """What Go's decoder makes of a JSON value: every number a float64."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, dict):
        return {k: as_go(v) for k, v in value.items()}
    return [as_go(v) for v in value]


# ---------------------------------------------------------------------------------------------
# Deep metadata is safe everywhere


def test_deep_metadata_compares_hashes_prints_and_encodes() -> None:
    deep = deep_list(MAX_DEPTH - 1)
    other = deep_list(MAX_DEPTH - 1)
    first, second = Endpoint("a", deep), Endpoint("a", other)
    assert first == second
    assert hash(first) == hash(second)
    assert first != Endpoint("a", deep_list(MAX_DEPTH - 2))
    assert len({first, second, Endpoint("b", deep)}) == 2
    text = repr(first)
    assert text.startswith("Endpoint(addr='a', metadata=[[[") and text.endswith("]]])")
    assert repr(Update.add("k", first)).count("[") == MAX_DEPTH - 1
    assert len(encode_endpoint(first)) > 2 * (MAX_DEPTH - 1)
    assert decode_endpoint("k", encode_endpoint(first)) == second


def test_endpoint_equality_is_json_equality() -> None:
    assert Endpoint("a", {"w": 1}) == Endpoint("a", {"w": 1.0})
    assert Endpoint("a", [1, "x"]) == Endpoint("a", (1, "x"))
    assert Endpoint("a", {"w": True}) != Endpoint("a", {"w": 1})
    assert Endpoint("a", {"w": 1}) != Endpoint("a", {"v": 1})
    assert Endpoint("a", None) != Endpoint("a", [])
    assert Endpoint("a") != Endpoint("b")
    assert Endpoint("a") != "a"
    cycle: list[Any] = []
    cycle.append(cycle)
    twin: list[Any] = []
    twin.append(twin)
    assert json_equal(cycle, twin)
    assert safe_repr(cycle) == "[[...]]"
    assert safe_repr({"a": (1,), "b": ()}) == "{'a': (1,), 'b': ()}"
    assert repr(Endpoint("a", {"w": [1, "x"]})) == "Endpoint(addr='a', metadata={'w': [1, 'x']})"


def test_endpoint_and_update_validate() -> None:
    with pytest.raises(ValueError, match="non-empty string"):
        Endpoint("")
    with pytest.raises(TypeError, match="must be a string"):
        Endpoint(b"a:1")  # type: ignore[arg-type]
    add = Update.add("s/k", Endpoint("a:1"), lease=7)
    assert (add.op, add.key, add.endpoint, add.lease) == (Operation.ADD, "s/k", Endpoint("a:1"), 7)
    delete = Update.delete("s/k")
    assert (delete.op, delete.endpoint, delete.lease) == (Operation.DELETE, None, 0)
    with pytest.raises(ValueError, match="lease"):
        Update.add("s/k", Endpoint("a:1"), lease=-1)
    with pytest.raises(ValueError, match="needs an endpoint"):
        Update(Operation.ADD, "s/k")


# ---------------------------------------------------------------------------------------------
# Attributes: the Go-safe string form


def test_attributes_round_trip_in_the_go_safe_string_form() -> None:
    endpoint = Endpoint.with_attributes("10.0.0.5:50051", weight=2, zone="eu-west-1a")
    assert endpoint.metadata == "weight=2&zone=eu-west-1a"
    assert endpoint.attributes == {"weight": "2", "zone": "eu-west-1a"}
    assert encode_endpoint(endpoint) == (
        b'{"Op":0,"Addr":"10.0.0.5:50051","Metadata":"weight=2\\u0026zone=eu-west-1a"}'
    )
    odd = Endpoint.with_attributes("a", {"a b": "x&y=z", "ok": True, "ratio": 0.5})
    assert odd.metadata == "a+b=x%26y%3Dz&ok=true&ratio=0.5"
    assert odd.attributes == {"a b": "x&y=z", "ok": "true", "ratio": "0.5"}
    for bad in ({"": 1}, {"w": None}, {"w": [1]}, {"w": math.inf}, {"w": 10**400}):
        with pytest.raises(ValueError, match="attribute"):
            encode_attributes(bad)


@pytest.mark.parametrize(
    ("metadata", "attributes"),
    [
        ("weight=2&zone=eu", {"weight": "2", "zone": "eu"}),
        ("weight=2&weight=3", {"weight": "2"}),  # the first wins, as Go's url.Values.Get
        ("flag&w=%32", {"flag": "", "w": "2"}),
        ("a;b=1&c=2", {"c": "2"}),  # Go's ParseQuery refuses ';'
        ('{"name":"proxy"}', {'{"name":"proxy"}': ""}),  # etcd's grpc-proxy: harmless
        ({"weight": 2, "zone": "eu", "on": True, "x": None, "y": [1], "z": 10**400}, None),
        (None, {}),
        (3, {}),
        ([1, 2], {}),
    ],
)
def test_metadata_attributes_read_both_forms(
    metadata: object, attributes: dict[str, str] | None
) -> None:
    expected = {"weight": "2", "zone": "eu", "on": "true"} if attributes is None else attributes
    assert metadata_attributes(metadata) == expected


@pytest.mark.parametrize(
    ("metadata", "weight"),
    [
        ("weight=3", 3),
        ("zone=eu&weight=10", 10),
        ({"weight": 3}, 3),
        ({"weight": 2.5}, 2),
        ("weight=4294967295", 2**32 - 1),
        (None, None),
        ("zone=eu", None),
        ({"zone": "eu"}, None),
    ],
)
def test_metadata_weight(metadata: object, weight: int | None) -> None:
    assert metadata_weight(metadata) == weight


@pytest.mark.parametrize(
    "metadata",
    ["weight=0", "weight=-1", "weight=abc", "weight=inf", "weight=nan", "weight=", "weight=1e3",
     "weight=4294967296", "weight=" + "9" * 5000, {"weight": 0}, {"weight": True},
     {"weight": "x"}, {"weight": 1e300}],
)  # fmt: skip
def test_metadata_weight_refuses_bad_values_with_a_clear_error(metadata: object) -> None:
    with pytest.raises(ValueError, match="is not a whole number from 1 to 4294967295"):
        metadata_weight(metadata)


@given(json_values | st.text() | st.integers())
def test_attribute_readers_never_fail_on_any_metadata(metadata: Any) -> None:
    attributes = metadata_attributes(metadata)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in attributes.items())
    try:
        weight = metadata_weight(metadata)
    except ValueError as exc:
        assert "is not a whole number" in str(exc)
    else:
        assert weight is None or 1 <= weight <= 2**32 - 1


# ---------------------------------------------------------------------------------------------
# Targets


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


@pytest.mark.parametrize(
    "metadata",
    [None, "zone=a", {"b": 1, "a": [True, None, 1.5]}, "<&>\u2028", 1e21, -0.0],
)
def test_encode_metadata_is_the_metadata_field_of_an_encoded_endpoint(metadata: Any) -> None:
    # encode_endpoint is checked byte for byte against Go (tests/interop); this is its field.
    record = encode_endpoint(Endpoint("a:1", metadata)).decode()
    assert record == f'{{"Op":0,"Addr":"a:1","Metadata":{encode_metadata(metadata)}}}'


def test_encode_metadata_writes_as_go_does() -> None:
    assert encode_metadata({"b": 1, "a": "<x>"}) == '{"a":"\\u003cx\\u003e","b":1}'
    assert encode_metadata(None) == "null"
    deep: Any = "leaf"
    for _ in range(MAX_DEPTH - 1):
        deep = [deep]
    assert encode_metadata(deep) == "[" * (MAX_DEPTH - 1) + '"leaf"' + "]" * (MAX_DEPTH - 1)
    for bad in (math.nan, math.inf, 2**1100, "\ud800"):
        with pytest.raises((ValueError, TypeError)):
            encode_metadata(bad)
