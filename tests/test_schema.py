"""The v1 message format: round trips, and one test per class of bad input asserting its reason code."""

from __future__ import annotations

import math

import numpy as np
import orjson
import pytest

from stream.network import Feature, Network
from stream.schema import MAX_TS_MS, MIN_TS_MS, REASONS, SCHEMA_VERSION, Decoder, encode_batch, encode_reading

TS = 1_700_000_000_000
NET = Network.simple(
    "test", 4, [Feature("speed", "mph", 0.0, 120.0), Feature("flow", "veh/h", 0.0, math.inf)], step_ms=60_000
)


@pytest.fixture
def decoder() -> Decoder:
    return Decoder(NET, max_message_bytes=10_000)


def dumps(obj: object) -> bytes:
    return orjson.dumps(obj)


def single(**over: object) -> bytes:
    msg: dict[str, object] = {"v": 1, "sensor": "s0001", "ts": TS, "values": {"speed": 61.2, "flow": 300}}
    msg.update(over)
    return dumps({k: v for k, v in msg.items() if v is not _DROP})


def batch(**over: object) -> bytes:
    msg: dict[str, object] = {
        "v": 1,
        "ts": TS,
        "sensors": ["s0000", "s0001", "s0002"],
        "values": {"speed": [61.2, None, 50], "flow": [300, 280, 0]},
    }
    msg.update(over)
    return dumps({k: v for k, v in msg.items() if v is not _DROP})


_DROP = object()


# -- the happy paths ---------------------------------------------------------------------------------------


def test_single_round_trip(decoder: Decoder) -> None:
    d = decoder.decode(encode_reading("s0002", TS, {"speed": 61.5, "flow": 300}))
    assert d.rejects == []
    assert d.n == 2
    assert d.ts.dtype == np.int64 and d.sensor.dtype == np.int32
    assert d.feature.dtype == np.int16 and d.value.dtype == np.float64
    assert d.ts.tolist() == [TS, TS]
    assert d.sensor.tolist() == [2, 2]
    assert d.feature.tolist() == [0, 1]
    assert d.value.tolist() == [61.5, 300.0]


def test_batch_round_trip_with_null_as_absent(decoder: Decoder) -> None:
    raw = encode_batch(TS, ["s0000", "s0003"], {"speed": [10.0, None], "flow": np.array([5.0, np.nan])})
    assert orjson.loads(raw)["values"]["flow"] == [5.0, None]
    d = decoder.decode(raw)
    assert d.rejects == []
    assert d.n == 2  # nulls are simply absent
    assert sorted(zip(d.sensor.tolist(), d.feature.tolist(), d.value.tolist(), strict=True)) == [
        (0, 0, 10.0),
        (0, 1, 5.0),
    ]


def test_schema_version_constant_and_reasons_documented() -> None:
    assert SCHEMA_VERSION == 1
    assert all(r.islower() and " " not in r for r in REASONS)


def test_single_null_value_is_absent_not_an_error(decoder: Decoder) -> None:
    d = decoder.decode(single(values={"speed": None, "flow": 3}))
    assert d.rejects == [] and d.n == 1


def test_integer_values_and_boundaries_accepted(decoder: Decoder) -> None:
    d = decoder.decode(single(values={"speed": 0, "flow": 0}))
    assert d.rejects == [] and d.value.tolist() == [0.0, 0.0]
    d = decoder.decode(single(values={"speed": 120.0}))
    assert d.rejects == [] and d.n == 1


def test_batch_all_null_carries_nothing(decoder: Decoder) -> None:
    d = decoder.decode(batch(values={"speed": [None, None, None]}))
    assert d.rejects == [] and d.n == 0


def test_extra_fields_are_tolerated(decoder: Decoder) -> None:
    d = decoder.decode(single(source="sim", seq=5))
    assert d.rejects == [] and d.n == 2


def test_encode_batch_rejects_misaligned_input() -> None:
    with pytest.raises(ValueError, match="entries for 2 sensors"):
        encode_batch(TS, ["a", "b"], {"speed": [1.0]})


# -- every class of bad input ------------------------------------------------------------------------------

DEEP = b"[" * 5000 + b"]" * 5000

WHOLE = [
    # (case id, raw bytes, reason, n_readings)
    ("tombstone_none", None, "empty", 1),
    ("zero_bytes", b"", "empty", 1),
    ("oversized", b'{"v":1,"pad":"' + b"x" * 20_000 + b'"}', "oversized", 1),
    ("malformed_json", b'{"v": 1, "ts": ', "undecodable", 1),
    ("plain_garbage", b"hello world", "undecodable", 1),
    ("truncated_batch_bytes", batch()[:-7], "undecodable", 1),
    ("trailing_garbage", single() + b"}", "undecodable", 1),
    ("nan_literal", b'{"v":1,"sensor":"s0001","ts":1700000000000,"values":{"speed":NaN}}', "undecodable", 1),
    ("non_utf8_bytes", b'{"v":1,"sensor":"s\xff\xfe","ts":1}', "not_utf8", 1),
    ("latin1_text", '{"v":1,"sensor":"caf\u00e9"}'.encode("latin-1"), "not_utf8", 1),
    ("deeply_nested", DEEP, "too_deep", 1),
    (
        "huge_float_1e999",
        b'{"v":1,"sensor":"s0001","ts":1700000000000,"values":{"speed":1e999}}',
        "not_finite",
        1,
    ),
    (
        "negative_inf",
        b'{"v":1,"sensor":"s0001","ts":1700000000000,"values":{"speed":-1e999}}',
        "not_finite",
        1,
    ),
    ("top_level_array", b"[1, 2, 3]", "not_json_object", 1),
    ("top_level_string", b'"s0001"', "not_json_object", 1),
    ("top_level_number", b"42", "not_json_object", 1),
    ("top_level_null", b"null", "not_json_object", 1),
    ("schema_from_future", single(v=2), "bad_schema_version", 2),
    ("schema_zero", single(v=0), "bad_schema_version", 2),
    ("version_as_string", single(v="1"), "wrong_type", 2),
    ("version_as_bool", single(v=True), "wrong_type", 2),
    ("version_as_float", single(v=1.0), "wrong_type", 2),
    ("missing_version", single(v=_DROP), "missing_field", 2),
    ("missing_ts", single(ts=_DROP), "missing_field", 2),
    ("null_ts", single(ts=None), "missing_field", 2),
    ("missing_values", single(values=_DROP), "missing_field", 1),
    ("missing_sensor_and_sensors", single(sensor=_DROP), "missing_field", 2),
    ("ts_as_string", single(ts="2023-11-14T22:13:20Z"), "wrong_type", 2),
    ("ts_as_float", single(ts=1.7e12), "wrong_type", 2),
    ("ts_as_bool", single(ts=True), "wrong_type", 2),
    ("ts_beyond_int64_as_float", b'{"v":1,"sensor":"s0001","ts":1e30,"values":{"speed":1}}', "wrong_type", 1),
    ("ts_in_1970", single(ts=86_400_000), "bad_timestamp", 2),
    ("ts_negative", single(ts=-5), "bad_timestamp", 2),
    ("ts_in_2100", single(ts=MAX_TS_MS + 86_400_000), "bad_timestamp", 2),
    ("ts_beyond_uint64", single(ts=18446744073709551615), "bad_timestamp", 2),
    ("values_as_list", single(values=[61.2, 300]), "wrong_type", 1),
    ("values_as_number", single(values=61.2), "wrong_type", 1),
    ("empty_values", single(values={}), "empty", 1),
    ("sensor_as_int", single(sensor=1), "wrong_type", 2),
    ("sensor_as_list", single(sensor=["s0001"]), "wrong_type", 2),
    ("both_sensor_and_sensors", single(sensors=["s0001"]), "ambiguous_kind", 2),
    ("batch_sensors_not_list", batch(sensors="s0001"), "wrong_type", 2),
    ("batch_sensors_hold_int", batch(sensors=["s0000", 1, "s0002"]), "wrong_type", 6),
    ("batch_sensors_hold_list", batch(sensors=["s0000", ["x"], "s0002"]), "wrong_type", 6),
    ("batch_empty_sensors", batch(sensors=[]), "empty", 1),
    ("batch_empty_values", batch(values={}), "empty", 3),
    ("batch_column_not_list", batch(values={"speed": 61.2}), "wrong_type", 3),
    ("batch_length_mismatch", batch(values={"speed": [1.0, 2.0]}), "length_mismatch", 3),
    ("batch_too_long_column", batch(values={"speed": [1.0, 2.0, 3.0, 4.0]}), "length_mismatch", 3),
    ("batch_one_column_short", batch(values={"speed": [1, 2, 3], "flow": [1]}), "length_mismatch", 6),
    ("batch_ts_in_1970", batch(ts=1000), "bad_timestamp", 6),
    ("batch_from_future", batch(v=7), "bad_schema_version", 6),
]


@pytest.mark.parametrize(("raw", "reason", "n_readings"), [c[1:] for c in WHOLE], ids=[c[0] for c in WHOLE])
def test_whole_message_rejects(decoder: Decoder, raw: bytes | None, reason: str, n_readings: int) -> None:
    d = decoder.decode(raw)
    assert d.n == 0
    assert [r.reason for r in d.rejects] == [reason], d.rejects
    assert d.rejects[0].n_readings == n_readings
    assert d.rejects[0].detail  # a human sentence
    assert reason in REASONS


PER_READING = [
    # (case id, raw, {reason: n_readings}, valid readings left)
    ("unknown_sensor", single(sensor="s9999"), {"unknown_sensor": 2}, 0),
    ("unknown_feature", single(values={"speed": 1.0, "humidity": 3}), {"unknown_feature": 1}, 1),
    ("negative_below_min", single(values={"speed": -1.0, "flow": 5}), {"out_of_range": 1}, 1),
    ("above_max", single(values={"speed": 500.0}), {"out_of_range": 1}, 0),
    ("huge_integer_value", single(values={"speed": 10**19}), {"out_of_range": 1}, 0),
    ("bool_value", single(values={"speed": True, "flow": 1}), {"wrong_type": 1}, 1),
    ("string_value", single(values={"speed": "61.2"}), {"wrong_type": 1}, 0),
    ("nested_value", single(values={"speed": {"value": 61.2}}), {"wrong_type": 1}, 0),
    ("list_value", single(values={"speed": [61.2]}), {"wrong_type": 1}, 0),
    ("mixed_problems", single(values={"speed": -1, "flow": "x", "rain": 1}), None, 0),
    ("batch_unknown_sensor", batch(sensors=["s0000", "zz", "s0002"]), {"unknown_sensor": 1}, 4),
    (
        "batch_unknown_feature",
        batch(values={"speed": [1, 2, 3], "rain": [1, None, 1]}),
        {"unknown_feature": 2},
        3,
    ),
    ("batch_negative_flow", batch(values={"flow": [-1, 2, -3]}), {"out_of_range": 2}, 1),
    ("batch_speed_too_high", batch(values={"speed": [1, 200.5, 3]}), {"out_of_range": 1}, 2),
    ("batch_bool_in_array", batch(values={"speed": [True, 2, 3]}), {"wrong_type": 1}, 2),
    ("batch_string_in_array", batch(values={"speed": ["1", 2, None]}), {"wrong_type": 1}, 1),
    ("batch_nested_in_array", batch(values={"speed": [[1], {"a": 1}, 3]}), {"wrong_type": 2}, 1),
    ("batch_all_sensors_unknown", batch(sensors=["a", "b", "c"]), {"unknown_sensor": 5}, 0),
]


@pytest.mark.parametrize(
    ("raw", "expected", "n_valid"), [c[1:] for c in PER_READING], ids=[c[0] for c in PER_READING]
)
def test_per_reading_rejects(
    decoder: Decoder, raw: bytes, expected: dict[str, int] | None, n_valid: int
) -> None:
    d = decoder.decode(raw)
    got = {r.reason: r.n_readings for r in d.rejects}
    if expected is None:
        expected = {"out_of_range": 1, "wrong_type": 1, "unknown_feature": 1}
    assert got == expected
    assert d.n == n_valid
    assert all(r.detail for r in d.rejects)


def test_bad_classes_are_many_and_reasons_all_exercised() -> None:
    assert len(WHOLE) + len(PER_READING) >= 30
    used = {c[2] for c in WHOLE} | {r for c in PER_READING if c[2] for r in c[2]}
    assert used == set(REASONS), set(REASONS) - used


def test_decode_never_raises_on_random_bytes(decoder: Decoder) -> None:
    rng = np.random.default_rng(0)
    good = single()
    for _ in range(2000):
        raw = bytearray(good)
        for i in rng.integers(0, len(raw), size=3):
            raw[i] = int(rng.integers(0, 256))
        d = decoder.decode(bytes(raw))
        assert d.n + d.n_rejected >= 1


def test_timestamp_ceiling_follows_reference() -> None:
    dec = Decoder(NET, max_future_ms=60_000)
    assert dec.decode(single(ts=TS + 3_600_000)).rejects == []
    dec.set_reference(TS)
    assert dec.decode(single(ts=TS + 60_000)).rejects == []
    assert [r.reason for r in dec.decode(single(ts=TS + 60_001)).rejects] == ["bad_timestamp"]
    assert [r.reason for r in dec.decode(single(ts=MIN_TS_MS - 1)).rejects] == ["bad_timestamp"]
    assert dec.decode(single(ts=MIN_TS_MS)).rejects == []


def test_every_result_is_typed_columns(decoder: Decoder) -> None:
    """Single, batch or rejected: `decode()` gives columns of the same dtypes (empty when nothing is valid)."""
    for raw, n in [(single(values={"speed": 3.0}), 1), (batch(), 5), (b"junk", 0)]:
        d = decoder.decode(raw)
        assert [c.dtype for c in d.columns()] == [np.int64, np.int32, np.int16, np.float64]
        assert d.n == n and all(len(c) == n for c in d.columns())
