"""Unit tests of the envelope (encode/decode), the serializers and the keyring.

Everything that is not an intact envelope written for this key by this serializer must
raise :class:`InvalidPayload` -- never another exception, and never a decoded value --
and a pickle payload must never be unpickled before its signature verified.
"""

from __future__ import annotations

import pathlib
import pickle
import threading
import zlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cachekit.exceptions import ConfigurationError, SerializationError
from cachekit.flow.envelope import (
    HEADER,
    HEADER_SIZE,
    VERSION,
    Envelope,
    InvalidPayload,
    decode,
    encode,
)
from cachekit.serializers import (
    MAC_SIZE,
    MIN_KEY_BYTES,
    JsonSerializer,
    Keyring,
    MsgpackSerializer,
    PickleSerializer,
    Serializer,
)

KEY = "t:{product:5}"
OTHER_KEY = "t:{product:6}"
SECRET = b"k" * 32
OTHER_SECRET = b"o" * 32
NEW_SECRET = b"n" * 32
CREATED = 1_700_000_000.25
EXPIRES = 1_700_000_060.5
VALUE: dict[str, Any] = {"id": 5, "name": "caf\u00e9", "tags": ["a", "b"], "price": 9.5}

OFF_VERSION = 2
OFF_FLAGS = 3
OFF_CODE = 4
FLAG_NULL = 0x01
FLAG_SIGNED = 0x02

# Two storage keys with the same crc32 (found by a birthday search over random tokens):
# only the MAC can tell a value moved between them.
CRC_TWIN_A = "p:{d4dcdb7ee7ff0957e454}"
CRC_TWIN_B = "p:{3dd5e1c0f6a7f8cae3ce}"


def _header(
    key: str,
    *,
    code: int,
    flags: int = 0,
    version: int = VERSION,
    magic: bytes = b"ck",
    size: int = 0,
) -> bytes:
    return HEADER.pack(
        magic, version, flags, code, zlib.crc32(key.encode()), size, CREATED, EXPIRES, 0.0
    )


def _flip(data: bytes, index: int) -> bytes:
    out = bytearray(data)
    out[index] ^= 0x01
    return bytes(out)


def _encode(serializer: Serializer, value: Any = VALUE, key: str = KEY) -> bytes:
    return encode(key, value, serializer, created=CREATED, expires=EXPIRES, load_time=0.125)


def _all_serializers() -> list[Serializer]:
    return [
        JsonSerializer(),
        JsonSerializer(keys=[SECRET]),
        MsgpackSerializer(),
        MsgpackSerializer(keys=[SECRET]),
        PickleSerializer(keys=[SECRET]),
    ]


SERIALIZER_IDS = ["json", "json-signed", "msgpack", "msgpack-signed", "pickle"]


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("serializer", _all_serializers(), ids=SERIALIZER_IDS)
def test_round_trip_keeps_value_and_fields(serializer: Serializer) -> None:
    data = _encode(serializer)
    env = decode(KEY, data, serializer)
    assert env == Envelope(VALUE, CREATED, EXPIRES, 0.125, False)
    assert env.is_null is False


@pytest.mark.parametrize("serializer", _all_serializers(), ids=SERIALIZER_IDS)
def test_null_marker_round_trip(serializer: Serializer) -> None:
    data = encode(KEY, None, serializer, created=CREATED, expires=EXPIRES, null=True)
    env = decode(KEY, data, serializer)
    assert env.is_null is True
    assert env.value is None
    assert (env.created, env.expires, env.load_time) == (CREATED, EXPIRES, 0.0)


@pytest.mark.parametrize("serializer", _all_serializers(), ids=SERIALIZER_IDS)
def test_cached_none_is_not_a_null_marker(serializer: Serializer) -> None:
    env = decode(KEY, _encode(serializer, None), serializer)
    assert env.value is None
    assert env.is_null is False


def test_signed_envelope_layout() -> None:
    unsigned = _encode(JsonSerializer())
    signed = _encode(JsonSerializer(keys=[SECRET]))
    assert len(signed) == len(unsigned) + MAC_SIZE
    assert (
        unsigned[HEADER_SIZE:]
        == signed[HEADER_SIZE + MAC_SIZE :]
        == b'{"id":5,"name":"caf\xc3\xa9","tags":["a","b"],"price":9.5}'
    )
    assert unsigned[OFF_FLAGS] == 0
    assert signed[OFF_FLAGS] == FLAG_SIGNED
    assert unsigned[:2] == b"ck"
    assert unsigned[OFF_VERSION] == VERSION


def test_pickle_round_trips_arbitrary_objects() -> None:
    serializer = PickleSerializer(keys=[SECRET])
    value = {"when": (1, 2), "set": {3, 4}, "bytes": b"\x00\xff", "path": pathlib.Path("/x")}
    assert decode(KEY, _encode(serializer, value), serializer).value == value


def test_msgpack_keeps_bytes_and_json_turns_tuples_into_lists() -> None:
    msgpack = MsgpackSerializer()
    assert decode(KEY, _encode(msgpack, b"\x00\xff"), msgpack).value == b"\x00\xff"
    json = JsonSerializer()
    assert decode(KEY, _encode(json, (1, 2)), json).value == [1, 2]


@pytest.mark.parametrize(
    ("expires", "now", "fresh"),
    [
        (0.0, 0.0, True),
        (0.0, 1e18, True),
        (100.0, 99.999, True),
        (100.0, 100.0, False),
        (100.0, 1e9, False),
    ],
)
def test_is_fresh(expires: float, now: float, fresh: bool) -> None:
    env = Envelope(1, 0.0, expires, 0.0, False)
    assert env.is_fresh(now) is fresh


def test_expires_zero_round_trips_as_never() -> None:
    serializer = JsonSerializer()
    data = encode(KEY, 1, serializer, created=CREATED, expires=0.0)
    env = decode(KEY, data, serializer)
    assert env.expires == 0.0
    assert env.is_fresh(CREATED + 10**9)


# --------------------------------------------------------------------------- encode errors


def _local_object() -> object:
    class Local:
        pass

    return Local()


@pytest.mark.parametrize(
    ("serializer", "value"),
    [
        (JsonSerializer(), object()),
        (JsonSerializer(), {1, 2}),
        (JsonSerializer(), {("tuple", "key"): 1}),
        (JsonSerializer(), 2**70),
        (JsonSerializer(keys=[SECRET]), object()),
        (MsgpackSerializer(), object()),
        (MsgpackSerializer(), {1, 2}),
        (MsgpackSerializer(), 2**70),
        (PickleSerializer(keys=[SECRET]), threading.Lock()),
        (PickleSerializer(keys=[SECRET]), lambda: None),
        (PickleSerializer(keys=[SECRET]), _local_object()),
    ],
    ids=[
        "json-object",
        "json-set",
        "json-tuple-key",
        "json-bigint",
        "json-signed-object",
        "msgpack-object",
        "msgpack-set",
        "msgpack-bigint",
        "pickle-lock",
        "pickle-lambda",
        "pickle-local-object",
    ],
)
def test_unserializable_value_raises_serialization_error(
    serializer: Serializer, value: object
) -> None:
    with pytest.raises(SerializationError, match="cannot encode"):
        _encode(serializer, value)


# --------------------------------------------------------------------------- hostile inputs


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_are_invalid(data: bytes) -> None:
    for serializer in (JsonSerializer(), JsonSerializer(keys=[SECRET])):
        with pytest.raises(InvalidPayload):
            decode(KEY, data, serializer)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_after_a_valid_signed_header_are_invalid(data: bytes) -> None:
    """Even with magic, version, code, crc and flags right, the MAC stops everything."""
    for serializer in (JsonSerializer(keys=[SECRET]), PickleSerializer(keys=[SECRET])):
        size = max(len(data) - MAC_SIZE, 0)
        header = _header(KEY, code=serializer.code, flags=FLAG_SIGNED, size=size)
        with pytest.raises(InvalidPayload):
            decode(KEY, header + data, serializer)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_payload_in_unsigned_json_decodes_or_is_invalid(data: bytes) -> None:
    """Without a MAC, the payload is only as good as orjson's parser: never another error."""
    try:
        env = decode(KEY, _header(KEY, code=1, size=len(data)) + data, JsonSerializer())
    except InvalidPayload:
        return
    assert env.is_null is False


def _truncation_errors(data: bytes, serializer: Serializer) -> dict[int, object]:
    """Each cut point of ``data`` and what decoding it gave (the value, or the reason)."""
    results: dict[int, object] = {}
    for length in range(len(data)):
        try:
            results[length] = ("decoded", decode(KEY, data[:length], serializer).value)
        except InvalidPayload as exc:
            results[length] = str(exc)
    return results


@pytest.mark.parametrize(
    "serializer",
    [
        JsonSerializer(keys=[SECRET]),
        MsgpackSerializer(keys=[SECRET]),
        PickleSerializer(keys=[SECRET]),
    ],
    ids=["json-signed", "msgpack-signed", "pickle"],
)
@pytest.mark.parametrize("value", [VALUE, 12345, None], ids=["dict", "int", "none"])
def test_every_truncation_of_a_signed_value_is_invalid(
    serializer: Serializer, value: object
) -> None:
    data = _encode(serializer, value)
    results = _truncation_errors(data, serializer)
    assert len(results) == len(data)
    for length, outcome in results.items():
        assert isinstance(outcome, str), f"cut at {length} decoded: {outcome!r}"
        if length < HEADER_SIZE:
            assert outcome == "truncated header"
        else:
            assert outcome == "payload length does not match its header"


@pytest.mark.parametrize(
    "serializer", [JsonSerializer(), MsgpackSerializer()], ids=["json", "msgpack"]
)
@pytest.mark.parametrize(
    "value", [VALUE, [1, 2, 3], "a string", True, None], ids=["dict", "list", "str", "bool", "none"]
)
def test_every_truncation_of_an_unsigned_structured_value_is_invalid(
    serializer: Serializer, value: object
) -> None:
    """A cut inside the header fails to unpack; a cut anywhere after it no longer matches
    the payload length the header records."""
    data = _encode(serializer, value)
    for length, outcome in _truncation_errors(data, serializer).items():
        assert isinstance(outcome, str), f"cut at {length} decoded: {outcome!r}"
        if length < HEADER_SIZE:
            assert outcome == "truncated header"
        else:
            assert outcome == "payload length does not match its header"


def test_a_truncated_number_is_caught_by_the_payload_length() -> None:
    """``12345`` cut after 3 digits would still parse as ``123``: only the payload length
    in the header tells the cut apart."""
    serializer = JsonSerializer()
    data = _encode(serializer, 12345)
    results = _truncation_errors(data, serializer)
    for length in range(HEADER_SIZE):
        assert results[length] == "truncated header"
    for length in range(HEADER_SIZE, len(data)):
        assert results[length] == "payload length does not match its header"
    with pytest.raises(InvalidPayload, match="payload length"):
        decode(KEY, data + b"6", serializer)


@pytest.mark.parametrize("payload", [b'{"id": 5, "na', b"[1, 2", b'"abc', b"tru", b"{"])
def test_truncated_json_payload_is_invalid(payload: bytes) -> None:
    """Even with a header that agrees with the cut length, the JSON itself does not parse."""
    data = _header(KEY, code=1, size=len(payload)) + payload
    with pytest.raises(InvalidPayload, match="payload does not decode"):
        decode(KEY, data, JsonSerializer())


@pytest.mark.parametrize("magic", [b"CK", b"kc", b"\x00\x00", b'{"'])
def test_wrong_magic_is_invalid(magic: bytes) -> None:
    data = _header(KEY, code=1, magic=magic) + b"1"
    with pytest.raises(InvalidPayload, match="not a cachekit envelope"):
        decode(KEY, data, JsonSerializer())


def test_plain_json_without_an_envelope_is_invalid() -> None:
    data = b'{"id": 5, "name": "a value another library wrote here"}'
    with pytest.raises(InvalidPayload):
        decode(KEY, data, JsonSerializer())


@pytest.mark.parametrize("serializer", _all_serializers(), ids=SERIALIZER_IDS)
@pytest.mark.parametrize("version", [0, VERSION + 1, 255])
def test_unknown_envelope_version_is_invalid(serializer: Serializer, version: int) -> None:
    data = bytearray(_encode(serializer))
    data[OFF_VERSION] = version
    with pytest.raises(InvalidPayload, match=f"unknown envelope version {version}"):
        decode(KEY, bytes(data), serializer)


@pytest.mark.parametrize(
    ("writer", "reader"),
    [
        (JsonSerializer(), MsgpackSerializer()),
        (MsgpackSerializer(), JsonSerializer()),
        (JsonSerializer(keys=[SECRET]), PickleSerializer(keys=[SECRET])),
        (PickleSerializer(keys=[SECRET]), MsgpackSerializer(keys=[SECRET])),
    ],
    ids=["json->msgpack", "msgpack->json", "signed-json->pickle", "pickle->signed-msgpack"],
)
def test_payload_of_another_serializer_is_invalid(writer: Serializer, reader: Serializer) -> None:
    with pytest.raises(InvalidPayload, match="written with serializer code"):
        decode(KEY, _encode(writer), reader)


def test_patched_serializer_code_is_invalid() -> None:
    data = bytearray(_encode(JsonSerializer()))
    data[OFF_CODE] = 200
    with pytest.raises(InvalidPayload, match="written with serializer code 200, expected 1"):
        decode(KEY, bytes(data), JsonSerializer())


@pytest.mark.parametrize("serializer", _all_serializers(), ids=SERIALIZER_IDS)
def test_value_read_under_another_key_is_invalid(serializer: Serializer) -> None:
    data = _encode(serializer, key=KEY)
    with pytest.raises(InvalidPayload, match="written for another key"):
        decode(OTHER_KEY, data, serializer)


def test_crc_twins_really_collide() -> None:
    assert CRC_TWIN_A != CRC_TWIN_B
    assert zlib.crc32(CRC_TWIN_A.encode()) == zlib.crc32(CRC_TWIN_B.encode())


def test_unsigned_value_moved_to_a_crc_twin_key_is_not_detected() -> None:
    """The crc32 catches accidents, not an adversary: only the MAC binds a value to its key."""
    serializer = JsonSerializer()
    data = _encode(serializer, key=CRC_TWIN_A)
    assert decode(CRC_TWIN_B, data, serializer).value == VALUE


@pytest.mark.parametrize(
    "serializer",
    [
        JsonSerializer(keys=[SECRET]),
        MsgpackSerializer(keys=[SECRET]),
        PickleSerializer(keys=[SECRET]),
    ],
    ids=["json-signed", "msgpack-signed", "pickle"],
)
def test_signed_value_moved_to_another_key_is_invalid(serializer: Serializer) -> None:
    data = _encode(serializer, key=CRC_TWIN_A)
    assert decode(CRC_TWIN_A, data, serializer).value == VALUE
    with pytest.raises(InvalidPayload, match="signature does not verify"):
        decode(CRC_TWIN_B, data, serializer)
    with pytest.raises(InvalidPayload, match="written for another key"):
        decode(OTHER_KEY, data, serializer)


@pytest.mark.parametrize(
    "serializer",
    [JsonSerializer(keys=[SECRET]), PickleSerializer(keys=[SECRET])],
    ids=["json-signed", "pickle"],
)
def test_signed_value_with_any_flipped_byte_is_invalid(serializer: Serializer) -> None:
    data = _encode(serializer)
    assert len(data) > HEADER_SIZE + MAC_SIZE
    for index in range(len(data)):
        with pytest.raises(InvalidPayload):
            decode(KEY, _flip(data, index), serializer)


@pytest.mark.parametrize(
    ("region", "index"),
    [
        ("mac", HEADER_SIZE),
        ("mac", HEADER_SIZE + MAC_SIZE - 1),
        ("payload", HEADER_SIZE + MAC_SIZE),
        ("payload", -1),
        ("header-created", 13),
        ("header-expires", 21),
        ("header-load-time", 29),
        ("header-null-flag", OFF_FLAGS),
    ],
)
def test_signed_value_flip_is_caught_by_the_mac(region: str, index: int) -> None:
    serializer = JsonSerializer(keys=[SECRET])
    data = _encode(serializer)
    with pytest.raises(InvalidPayload, match="signature does not verify"):
        decode(KEY, _flip(data, index), serializer)


def test_unsigned_envelope_is_invalid_when_signatures_are_required() -> None:
    data = _encode(JsonSerializer())
    with pytest.raises(InvalidPayload, match="unsigned, but signatures are required"):
        decode(KEY, data, JsonSerializer(keys=[SECRET]))


def test_signed_envelope_is_invalid_without_a_keyring() -> None:
    data = _encode(JsonSerializer(keys=[SECRET]))
    with pytest.raises(InvalidPayload, match="signed, but no keyring is configured"):
        decode(KEY, data, JsonSerializer())


def test_signed_envelope_under_another_secret_is_invalid() -> None:
    data = _encode(JsonSerializer(keys=[SECRET]))
    with pytest.raises(InvalidPayload, match="signature does not verify"):
        decode(KEY, data, JsonSerializer(keys=[OTHER_SECRET]))


def test_signed_envelope_with_a_short_mac_is_invalid() -> None:
    header = _header(KEY, code=1, flags=FLAG_SIGNED)
    for mac_length in (0, 1, MAC_SIZE - 1):
        with pytest.raises(InvalidPayload, match="payload length does not match"):
            decode(KEY, header + b"\x00" * mac_length, JsonSerializer(keys=[SECRET]))


def test_unsigned_null_marker_with_a_payload_is_invalid() -> None:
    data = _header(KEY, code=1, flags=FLAG_NULL, size=2) + b"42"
    with pytest.raises(InvalidPayload, match="null marker with a payload"):
        decode(KEY, data, JsonSerializer())
    # ... while the same header without a payload is a null marker.
    assert decode(KEY, _header(KEY, code=1, flags=FLAG_NULL), JsonSerializer()).is_null


def test_signed_null_marker_with_a_payload_is_invalid_even_when_correctly_signed() -> None:
    serializer = JsonSerializer(keys=[SECRET])
    payload = b"42"
    header = _header(KEY, code=1, flags=FLAG_NULL | FLAG_SIGNED, size=len(payload))
    mac = Keyring([SECRET]).sign(KEY.encode(), header, payload)
    with pytest.raises(InvalidPayload, match="null marker with a payload"):
        decode(KEY, header + mac + payload, serializer)


def test_flipping_the_null_flag_of_an_unsigned_value_is_invalid() -> None:
    data = _flip(_encode(JsonSerializer()), OFF_FLAGS)
    with pytest.raises(InvalidPayload, match="null marker with a payload"):
        decode(KEY, data, JsonSerializer())


def test_invalid_payload_is_a_serialization_error() -> None:
    assert issubclass(InvalidPayload, SerializationError)
    with pytest.raises(SerializationError):
        decode(KEY, b"ck\x01", JsonSerializer())


# --------------------------------------------------------------------------- keyring


def test_rotation_old_values_verify_with_the_new_ring_first() -> None:
    old_writer = JsonSerializer(keys=[SECRET])
    data = _encode(old_writer)
    rotated = JsonSerializer(keys=[NEW_SECRET, SECRET])
    assert decode(KEY, data, rotated).value == VALUE
    with pytest.raises(InvalidPayload, match="signature does not verify"):
        decode(KEY, data, JsonSerializer(keys=[NEW_SECRET]))


def test_rotation_new_values_are_signed_by_the_first_key() -> None:
    rotated = JsonSerializer(keys=[NEW_SECRET, SECRET])
    data = _encode(rotated)
    assert decode(KEY, data, JsonSerializer(keys=[NEW_SECRET])).value == VALUE
    with pytest.raises(InvalidPayload, match="signature does not verify"):
        decode(KEY, data, JsonSerializer(keys=[SECRET]))
    mac = data[HEADER_SIZE : HEADER_SIZE + MAC_SIZE]
    assert mac == Keyring([NEW_SECRET]).sign(
        KEY.encode(), data[:HEADER_SIZE], data[HEADER_SIZE + MAC_SIZE :]
    )
    assert mac != Keyring([SECRET]).sign(
        KEY.encode(), data[:HEADER_SIZE], data[HEADER_SIZE + MAC_SIZE :]
    )


def test_keyring_sign_and_verify() -> None:
    ring = Keyring([NEW_SECRET, SECRET])
    mac = ring.sign(b"key", b"payload")
    assert len(mac) == MAC_SIZE
    assert ring.verify(mac, b"key", b"payload")
    assert Keyring([SECRET, NEW_SECRET]).verify(mac, b"key", b"payload")
    assert not Keyring([SECRET]).verify(mac, b"key", b"payload")
    assert not ring.verify(mac, b"key", b"payloaD")
    assert not ring.verify(mac, b"ke", b"ypayload"), "parts are length-prefixed"
    assert not ring.verify(mac[:-1], b"key", b"payload")


def test_keyring_accepts_str_keys_as_utf8() -> None:
    text = "s" * MIN_KEY_BYTES
    assert Keyring([text]).sign(b"x") == Keyring([text.encode()]).sign(b"x")
    assert len(Keyring([text, SECRET])) == 2
    assert "s" * 4 not in repr(Keyring([text]))


@pytest.mark.parametrize(
    "keys",
    [
        [],
        [b""],
        [b"x" * (MIN_KEY_BYTES - 1)],
        ["x" * (MIN_KEY_BYTES - 1)],
        [SECRET, b"short"],
    ],
    ids=["no-keys", "empty-key", "short-bytes", "short-str", "one-short-among-good"],
)
def test_keyring_rejects_missing_or_short_keys(keys: list[bytes | str]) -> None:
    with pytest.raises(ConfigurationError):
        Keyring(keys)
    with pytest.raises(ConfigurationError):
        PickleSerializer(keys=keys)
    with pytest.raises(ConfigurationError):
        JsonSerializer(keys=keys)


def test_keyring_accepts_a_key_of_exactly_the_minimum_length() -> None:
    assert len(Keyring([b"x" * MIN_KEY_BYTES])) == 1


# --------------------------------------------------------------------------- pickle safety


class Evil:
    """Unpickling this creates the file at ``path``: the proof that code ran."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (pathlib.Path.touch, (self.path,))


@pytest.fixture
def evil(tmp_path: pathlib.Path) -> tuple[pathlib.Path, bytes]:
    target = tmp_path / "pwned"
    return target, pickle.dumps(Evil(target), protocol=pickle.HIGHEST_PROTOCOL)


def test_the_malicious_pickle_really_runs_code(evil: tuple[pathlib.Path, bytes]) -> None:
    """The control: plain ``pickle.loads`` of this payload creates the file."""
    target, payload = evil
    assert not target.exists()
    pickle.loads(payload)
    assert target.exists()


def test_pickle_serializer_requires_keys() -> None:
    with pytest.raises(TypeError):
        PickleSerializer()  # type: ignore[call-arg]


def _pickle_attacks(key: str, payload: bytes) -> dict[str, bytes]:
    code, size = PickleSerializer.code, len(payload)
    header = _header(key, code=code, flags=FLAG_SIGNED, size=size)
    forged_by_other_secret = Keyring([OTHER_SECRET]).sign(key.encode(), header, payload)
    return {
        "raw-pickle": payload,
        "unsigned-envelope": _header(key, code=code, size=size) + payload,
        "zero-mac": header + b"\x00" * MAC_SIZE + payload,
        "random-mac": header + bytes(range(MAC_SIZE)) + payload,
        "other-secret": header + forged_by_other_secret + payload,
    }


@pytest.mark.parametrize(
    "attack",
    ["raw-pickle", "unsigned-envelope", "zero-mac", "random-mac", "other-secret"],
)
def test_malicious_pickle_is_never_unpickled(evil: tuple[pathlib.Path, bytes], attack: str) -> None:
    target, payload = evil
    data = _pickle_attacks(KEY, payload)[attack]
    with pytest.raises(InvalidPayload):
        decode(KEY, data, PickleSerializer(keys=[SECRET]))
    assert not target.exists()


def test_malicious_pickle_signed_for_another_key_is_never_unpickled(
    evil: tuple[pathlib.Path, bytes],
) -> None:
    target, payload = evil
    serializer = PickleSerializer(keys=[SECRET])
    header = _header(CRC_TWIN_A, code=PickleSerializer.code, flags=FLAG_SIGNED, size=len(payload))
    data = header + Keyring([SECRET]).sign(CRC_TWIN_A.encode(), header, payload) + payload
    with pytest.raises(InvalidPayload, match="signature does not verify"):
        decode(CRC_TWIN_B, data, serializer)
    assert not target.exists()
