"""Tests for the control protocol: request validation and response framing. No I/O."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from colonet.buffer.hooks import FailoverRole
from colonet.control.protocol import (
    MAX_REQUEST_BYTES,
    REQUEST_TYPES,
    CheckpointRequest,
    CommitRequest,
    FailoverRequest,
    RemoteError,
    Request,
    StatusRequest,
    decode_response,
    encode_error,
    encode_request,
    encode_result,
    parse_request,
)
from colonet.errors import (
    ColonetError,
    ControlSocketError,
    KernelSetupError,
    PrivilegeError,
    RemoteRequestError,
    UnknownNetdevError,
    UsageError,
)


def line(body: object) -> bytes:
    return json.dumps(body).encode() + b"\n"


# -- valid requests ---------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"op": "checkpoint"}, CheckpointRequest()),
        ({"op": "status"}, StatusRequest()),
        ({"op": "commit"}, CommitRequest()),
        ({"op": "commit", "epoch": 1}, CommitRequest(epoch=1)),
        ({"op": "commit", "epoch": 7}, CommitRequest(epoch=7)),
        ({"op": "commit", "epoch": 2**40}, CommitRequest(epoch=2**40)),
        ({"op": "failover", "role": "primary"}, FailoverRequest(role=FailoverRole.PRIMARY)),
        ({"op": "failover", "role": "secondary"}, FailoverRequest(role=FailoverRole.SECONDARY)),
    ],
)
def test_parse_request_accepts_valid_ops(body: dict[str, object], expected: Request) -> None:
    assert parse_request(line(body)) == expected


def test_parse_request_accepts_surrounding_whitespace_and_no_newline() -> None:
    assert parse_request(b'  {"op": "status"}  \r\n') == StatusRequest()
    assert parse_request(b'{"op":"checkpoint"}') == CheckpointRequest()


def test_parse_request_accepts_a_line_of_exactly_the_limit() -> None:
    raw = b'{"op": "status"}'
    padded = raw + b" " * (MAX_REQUEST_BYTES - len(raw))
    assert len(padded) == MAX_REQUEST_BYTES
    assert parse_request(padded) == StatusRequest()


@pytest.mark.parametrize(
    "request_",
    [
        CheckpointRequest(),
        StatusRequest(),
        CommitRequest(),
        CommitRequest(epoch=3),
        FailoverRequest(role=FailoverRole.PRIMARY),
        FailoverRequest(role=FailoverRole.SECONDARY),
    ],
)
def test_request_to_json_round_trips(request_: Request) -> None:
    assert parse_request(encode_request(request_)) == request_


# -- malformed requests -----------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [b"", b"not json", b"{", b'{"op": "status"', b"{'op': 'status'}", b'{"op": status}'],
)
def test_parse_request_rejects_non_json(raw: bytes) -> None:
    with pytest.raises(RemoteRequestError, match="request is not valid JSON"):
        parse_request(raw)


@pytest.mark.parametrize(
    "raw", [b'{"op": "\xff"}', b'\x80{"op": "status"}', b'{"op": "st\xc3atus"}']
)
def test_parse_request_rejects_invalid_utf8(raw: bytes) -> None:
    with pytest.raises(RemoteRequestError, match="request is not valid JSON.*utf-8"):
        parse_request(raw)


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        (b'[{"op": "status"}]', "list"),
        (b"[]", "list"),
        (b"42", "int"),
        (b"1.5", "float"),
        (b'"status"', "str"),
        (b"true", "bool"),
        (b"null", "NoneType"),
    ],
)
def test_parse_request_rejects_json_that_is_not_an_object(raw: bytes, kind: str) -> None:
    with pytest.raises(RemoteRequestError, match=f"must be a JSON object, got {kind}"):
        parse_request(raw)


@pytest.mark.parametrize("op", ["reboot", "CHECKPOINT", "", 1, None, ["status"]])
def test_parse_request_rejects_unknown_op(op: object) -> None:
    with pytest.raises(RemoteRequestError, match=r"unknown op .*expected one of checkpoint"):
        parse_request(line({"op": op}))


def test_parse_request_rejects_missing_op() -> None:
    with pytest.raises(RemoteRequestError, match="unknown op None"):
        parse_request(line({"epoch": 3}))
    with pytest.raises(RemoteRequestError, match="unknown op None"):
        parse_request(b"{}")


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"op": "status", "verbose": True}, "verbose"),
        ({"op": "status", "epoch": 1}, "epoch"),
        ({"op": "checkpoint", "role": "primary"}, "role"),
        ({"op": "checkpoint", "b": 1, "a": 2}, "a, b"),
        ({"op": "commit", "role": "primary"}, "role"),
        ({"op": "commit", "epoch": 1, "force": True}, "force"),
        ({"op": "failover", "role": "primary", "epoch": 2}, "epoch"),
    ],
)
def test_parse_request_rejects_extra_fields(body: dict[str, object], fields: str) -> None:
    with pytest.raises(
        RemoteRequestError, match=rf"op '{body['op']}' takes no field\(s\) {fields}"
    ):
        parse_request(line(body))


@pytest.mark.parametrize(
    ("epoch", "shown"),
    [
        (0, "0"),
        (-1, "-1"),
        (-(2**40), str(-(2**40))),
        ("1", "'1'"),
        (True, "True"),
        (False, "False"),
        (1.0, "1.0"),
        (2.5, "2.5"),
        ([1], r"\[1\]"),
        ({"n": 1}, r"\{'n': 1\}"),
    ],
)
def test_parse_request_rejects_bad_epoch(epoch: object, shown: str) -> None:
    with pytest.raises(RemoteRequestError, match=f"epoch must be a positive integer, got {shown}$"):
        parse_request(line({"op": "commit", "epoch": epoch}))


@pytest.mark.parametrize(
    ("body", "shown"),
    [
        ({"op": "failover", "role": "tertiary"}, "'tertiary'"),
        ({"op": "failover", "role": "PRIMARY"}, "'PRIMARY'"),
        ({"op": "failover", "role": 1}, "1"),
    ],
)
def test_parse_request_rejects_bad_failover_role(body: dict[str, object], shown: str) -> None:
    with pytest.raises(
        RemoteRequestError, match=f"failover role must be one of primary, secondary, got {shown}$"
    ):
        parse_request(line(body))


def test_failover_without_a_role_is_for_an_engine_socket() -> None:
    # The engine knows its own role; a filter process refuses it (tested
    # with the filter daemon).
    assert parse_request(line({"op": "failover"})).role is None


@pytest.mark.parametrize(
    "body",
    [
        {"op": "commit", "epoch": None},
        {"op": "checkpoint", "epoch": None},
        {"op": "failover", "role": None},
        {"op": "dump", "path": None},
    ],
)
def test_parse_request_refuses_null_fields(body: dict[str, object]) -> None:
    # Absent means "all sealed" for commit: a null must not silently mean it.
    with pytest.raises(RemoteRequestError, match="must not be null: leave the field out"):
        parse_request(line(body))


@pytest.mark.parametrize(
    "raw",
    [b'{"op": "commit", "epoch": 1, "epoch": 9}', b'{"op": "status", "op": "commit"}'],
)
def test_parse_request_refuses_duplicate_keys(raw: bytes) -> None:
    with pytest.raises(RemoteRequestError, match="request repeats the field"):
        parse_request(raw)


def test_each_request_record_is_in_the_table_and_round_trips() -> None:
    for op, (record, fields) in REQUEST_TYPES.items():
        assert record.op == op
        assert fields <= {f.name for f in dataclasses.fields(record)}


def test_parse_request_rejects_a_line_over_the_limit() -> None:
    raw = b'{"op": "status"}'
    oversized = raw + b" " * (MAX_REQUEST_BYTES + 1 - len(raw))
    with pytest.raises(
        RemoteRequestError,
        match=f"request of {MAX_REQUEST_BYTES + 1} bytes is over the {MAX_REQUEST_BYTES}-byte",
    ):
        parse_request(oversized)


def test_remote_request_error_is_a_usage_error_with_exit_code_2() -> None:
    with pytest.raises(UsageError) as info:
        parse_request(b"nope")
    assert info.value.exit_code == 2


def test_parse_request_rejects_deeply_nested_json() -> None:
    raw = b"[" * 60_000  # under MAX_REQUEST_BYTES, deeper than the recursion limit
    with pytest.raises(RemoteRequestError):
        parse_request(raw)


def test_parse_request_rejects_a_huge_integer_literal() -> None:
    raw = b'{"op": "commit", "epoch": ' + b"9" * 5000 + b"}"
    with pytest.raises(RemoteRequestError):
        parse_request(raw)


# -- fuzzing ----------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)

request_like = st.fixed_dictionaries(
    {},
    optional={
        "op": st.sampled_from(["checkpoint", "commit", "failover", "status", "x"]) | json_values,
        "epoch": json_values,
        "role": st.sampled_from(["primary", "secondary"]) | json_values,
        "extra": json_values,
    },
)


def _check_parse(raw: bytes) -> None:
    try:
        result = parse_request(raw)
    except RemoteRequestError:
        return
    assert isinstance(result, tuple(record for record, _ in REQUEST_TYPES.values()))
    epoch = getattr(result, "epoch", None)
    assert epoch is None or (type(epoch) is int and epoch >= 1)
    assert getattr(result, "role", None) in (None, *FailoverRole)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_parse_request_on_arbitrary_bytes_returns_request_or_remote_request_error(
    raw: bytes,
) -> None:
    _check_parse(raw)


@settings(max_examples=300, deadline=None)
@given(json_values | request_like)
def test_parse_request_on_arbitrary_json_returns_request_or_remote_request_error(
    body: object,
) -> None:
    _check_parse(json.dumps(body).encode())


# -- responses --------------------------------------------------------------


@pytest.mark.parametrize(
    "result",
    [{}, {"epoch": 3, "released": 12}, {"netdevs": [{"netdev": "tap0", "state": "buffering"}]}],
)
def test_encode_result_round_trips(result: dict[str, object]) -> None:
    class Record:
        def to_json(self) -> dict[str, object]:
            return result

    encoded = encode_result(Record())
    assert encoded.endswith(b"\n")
    assert encoded.count(b"\n") == 1
    assert json.loads(encoded) == {"ok": True, "result": result}
    assert decode_response(encoded) == result


@pytest.mark.parametrize(
    ("exc", "exit_code"),
    [
        (UnknownNetdevError("netdev 'tap9' does not exist"), 2),
        (RemoteRequestError("unknown op 'x'"), 2),
        (UsageError("cannot commit"), 2),
        (PrivilegeError("needs CAP_NET_ADMIN"), 3),
        (ControlSocketError("socket gone"), 4),
        (KernelSetupError("iptables failed"), 5),
        (ColonetError("generic"), 1),
        (RuntimeError("not ours"), 1),
        (KeyError("k"), 1),
    ],
)
def test_error_response_carries_kind_message_and_exit_code(
    exc: BaseException, exit_code: int
) -> None:
    encoded = encode_error(exc)
    assert encoded.endswith(b"\n")
    body = json.loads(encoded)
    assert body == {
        "ok": False,
        "error": {"kind": type(exc).__name__, "message": str(exc), "exit_code": exit_code},
    }
    with pytest.raises(RemoteError) as info:
        decode_response(encoded)
    assert info.value.kind == type(exc).__name__
    assert str(info.value) == str(exc)
    assert info.value.exit_code == exit_code
    assert isinstance(info.value, ColonetError)


def test_encode_error_keeps_a_multiline_message_on_one_line() -> None:
    encoded = encode_error(UsageError("first\nsecond"))
    assert encoded.count(b"\n") == 1
    with pytest.raises(RemoteError, match="first\nsecond"):
        decode_response(encoded)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"garbage",
        b"\xff\xfe",
        b"null",
        b"42",
        b'"ok"',
        b"[]",
        b"{}",
        b'{"ok": true}',
        b'{"ok": false}',
        b'{"ok": false, "error": null}',
        b'{"ok": false, "error": {"kind": "X", "message": "m"}}',
        b'{"ok": false, "error": {"kind": "X", "exit_code": 2}}',
        b'{"ok": false, "error": {"kind": "X", "message": "m", "exit_code": "two"}}',
    ],
)
def test_decode_response_on_garbage_raises_bad_response(raw: bytes) -> None:
    with pytest.raises(RemoteError, match="malformed response from server") as info:
        decode_response(raw)
    assert info.value.kind == "BadResponse"
    assert info.value.exit_code == 4


def test_decode_response_on_deeply_nested_json_raises_bad_response() -> None:
    with pytest.raises(RemoteError):
        decode_response(b"[" * 60_000)
