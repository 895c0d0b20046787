"""Bad input through the real consumer: a corpus of malformed, hostile and messy messages produced to
Kafka, each dead-lettered with its precise reason (read back from the dead-letter topic) or counted as
late / duplicate; the consumer keeps going and windows the valid readings sent after them. Plus a bounded
hypothesis fuzz of `Decoder.decode` and `Ingestor.ingest`: never raises, the ledger always balances."""

from __future__ import annotations

import math
import time

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import TopicPartition

from serving.config import Settings
from stream.archive import Archive
from stream.consume import IngestService
from stream.ingest import DEAD_LETTER_RAW_MAX, DeadLetter, Ingestor
from stream.kafka_io import ensure_topics
from stream.ledger import BUCKETS
from stream.network import Feature, Network
from stream.schema import REASONS, Decoder, encode_batch, encode_reading
from tests.conftest import wait_for
from tests.faults.reliability import Reliability

pytestmark = pytest.mark.faults

STEP = 60_000
T0 = 1_700_000_040_000 - 1_700_000_040_000 % STEP
NET = Network.simple(
    "corpus", 4, [Feature("speed", "mph", 0.0, 120.0), Feature("flow", "veh/h", 0.0, math.inf)], step_ms=STEP
)
TS = T0 + 3 * STEP  # the corpus sits between valid steps, inside the open range


def _j(obj: object) -> bytes:
    return orjson.dumps(obj)


def _single(**over: object) -> bytes:
    msg: dict[str, object] = {"v": 1, "sensor": "s0001", "ts": TS, "values": {"speed": 61.2, "flow": 300}}
    msg.update(over)
    return _j({k: v for k, v in msg.items() if v is not None})


def _batch(**over: object) -> bytes:
    msg: dict[str, object] = {
        "v": 1,
        "ts": TS,
        "sensors": ["s0000", "s0001", "s0002"],
        "values": {"speed": [61.2, 55.0, 50], "flow": [300, 280, 10]},
    }
    msg.update(over)
    return _j(msg)


def _raw(ts: int, speed: str) -> bytes:
    return b'{"v":1,"sensor":"s0001","ts":%d,"values":{"speed":%s}}' % (ts, speed.encode())


# (class, raw bytes, reason, readings dead-lettered); the valid readings a class carries besides are windowed
CORPUS: list[tuple[str, bytes | None, str, int]] = [
    ("empty message (zero bytes)", b"", "empty", 1),
    ("tombstone (null value)", None, "empty", 1),
    ("oversized message (1.1 MB)", b'{"v":1,"pad":"' + b"x" * 1_150_000 + b'"}', "oversized", 1),
    ("malformed JSON (cut mid-object)", b'{"v": 1, "ts": ', "undecodable", 1),
    ("plain text", b"hello world", "undecodable", 1),
    ("truncated batch (bytes cut)", _batch()[:-9], "undecodable", 1),
    ("trailing garbage after the object", _single() + b"}}", "undecodable", 1),
    ("NaN literal", _raw(TS, "NaN"), "undecodable", 1),
    ("UTF-8 byte order mark", b"\xef\xbb\xbf" + _single(), "not_utf8", 1),
    ("huge float 1e999 (inf)", _raw(TS, "1e999"), "not_finite", 1),
    ("huge negative float -1e999 (-inf)", _raw(TS, "-1e999"), "not_finite", 1),
    ("non-UTF-8 bytes", b'{"v":1,"sensor":"s\xff\xfe","ts":1}', "not_utf8", 1),
    ("latin-1 text", '{"v":1,"sensor":"caf\u00e9"}'.encode("latin-1"), "not_utf8", 1),
    ("deeply nested JSON (5000 levels)", b"[" * 5000 + b"]" * 5000, "too_deep", 1),
    ("top-level array", b"[1, 2, 3]", "not_json_object", 1),
    ("top-level null", b"null", "not_json_object", 1),
    ("schema version from the future (v=2)", _single(v=2), "bad_schema_version", 2),
    ("schema version 0", _single(v=0), "bad_schema_version", 2),
    ("version as a string", _single(v="1"), "wrong_type", 2),
    ("missing ts", _j({"v": 1, "sensor": "s0001", "values": {"speed": 1.0}}), "missing_field", 1),
    ("missing v", _j({"sensor": "s0001", "ts": TS, "values": {"speed": 1.0}}), "missing_field", 1),
    ("missing values", _j({"v": 1, "sensor": "s0001", "ts": TS}), "missing_field", 1),
    ("neither sensor nor sensors", _j({"v": 1, "ts": TS, "values": {"speed": 1.0}}), "missing_field", 1),
    ("ts as a string", _single(ts="2023-11-14T22:14:00Z"), "wrong_type", 2),
    ("ts as a float", _single(ts=TS + 0.5), "wrong_type", 2),
    ("values as a list", _single(values=[1.0, 2.0]), "wrong_type", 1),
    ("value as a string", _single(values={"speed": "fast"}), "wrong_type", 1),
    ("value as a bool", _single(values={"speed": True}), "wrong_type", 1),
    ("value as an object", _single(values={"speed": {"x": 1}}), "wrong_type", 1),
    ("sensor id as a number", _single(sensor=1), "wrong_type", 2),
    ("both sensor and sensors", _single(sensors=["s0001"]), "ambiguous_kind", 2),
    (
        "mismatched array lengths",
        _batch(values={"speed": [1.0, 2.0], "flow": [1, 2, 3]}),
        "length_mismatch",
        6,
    ),
    ("truncated batch (arrays cut short)", _batch(values={"speed": [1.0]}), "length_mismatch", 3),
    ("sensors not a list", _batch(sensors="s0001"), "wrong_type", 2),
    ("sensors holding a number", _batch(sensors=["s0000", 7, "s0002"]), "wrong_type", 6),
    ("empty sensors list", _batch(sensors=[], values={"speed": []}), "empty", 1),
    ("empty values object", _single(values={}), "empty", 1),
    ("unknown sensor", _single(sensor="s9999"), "unknown_sensor", 2),
    (
        "unknown sensor id of 10 000 chars",
        _single(sensor="x" * 10_000, values={"flow": 1}),
        "unknown_sensor",
        1,
    ),
    ("unknown feature", _single(values={"temperature": 21.5}), "unknown_feature", 1),
    ("negative count (flow < min 0)", _single(values={"flow": -5}), "out_of_range", 1),
    ("huge number (speed 1e300)", _single(values={"speed": 1e300}), "out_of_range", 1),
    ("huge integer (10**29)", _raw(TS, "100000000000000000000000000000"), "out_of_range", 1),
    ("timestamp in 1970", _single(ts=0), "bad_timestamp", 2),
    ("negative timestamp", _single(ts=-1), "bad_timestamp", 2),
    ("timestamp in 2100", _single(ts=4_102_444_800_000), "bad_timestamp", 2),
    ("timestamp in seconds, not ms", _single(ts=TS // 1000), "bad_timestamp", 2),
]

LATE_TS = T0 + 1 * STEP  # sealed before the late reading arrives
FLOOD = 200  # copies of one valid message


def _send_all(producer: KafkaProducer, topic: str, msgs: list[bytes | None]) -> list[int]:
    futures = [producer.send(topic, value=m, key=b"k", partition=0) for m in msgs]
    producer.flush()
    return [f.get(30).offset for f in futures]


def _dead_letters(s: Settings, want: int, timeout_s: float = 60) -> list[DeadLetter]:
    """The dead-letter topic from the start: until `want` letters came back, or what came by `timeout_s`."""
    c = KafkaConsumer(
        bootstrap_servers=s.kafka.bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    tp = TopicPartition(s.kafka.dead_letter_topic, 0)
    c.assign([tp])
    c.seek_to_beginning(tp)
    out: list[DeadLetter] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(out) < want and time.monotonic() < deadline:
            out += [DeadLetter.from_json(m.value) for ms in c.poll(500).values() for m in ms]
    finally:
        c.close()
    return out


def _valid_step(t: int) -> list[bytes]:
    return [encode_batch(T0 + t * STEP, NET.sensors, {"speed": [50.0 + t] * 4, "flow": [100.0 + t] * 4})]


def test_bad_input_corpus_through_the_real_consumer(
    fault_settings: Settings, reliability: Reliability
) -> None:
    s = fault_settings.model_copy(deep=True)
    s.kafka.partitions = 1  # one partition: send order is read order, so "late" is exact
    assert len({c for c, *_ in CORPUS}) >= 30 and {r for _, _, r, _ in CORPUS} <= set(REASONS)
    ensure_topics(s.kafka, {s.kafka.readings_topic: 1, s.kafka.dead_letter_topic: 1})
    producer = KafkaProducer(bootstrap_servers=s.kafka.bootstrap, acks="all", max_request_size=8 * 2**20)
    svc = IngestService(s.kafka, s.window, Archive(s.archive.root, NET), NET).start()
    t_start = time.monotonic()
    try:
        # steps 0..5 valid; once step 1 is sealed, the corpus, a late reading, a duplicate flood, steps 6..9
        _send_all(producer, s.kafka.readings_topic, [m for t in range(6) for m in _valid_step(t)])
        wait_for(
            lambda: svc.poll_once(200) is not None and (svc.ingestor.windower.sealed_through or 0) >= LATE_TS,
            timeout_s=60,
            what="step 1 sealed",
        )
        offsets = _send_all(producer, s.kafka.readings_topic, [raw for _, raw, _, _ in CORPUS])
        late = encode_reading("s0002", LATE_TS, {"speed": 40.0})  # beyond allowed lateness (0)
        dup = encode_reading("s0003", T0 + 5 * STEP, {"speed": 55.0, "flow": 105.0})  # step 5: already held
        _send_all(producer, s.kafka.readings_topic, [late] + [dup] * FLOOD)
        _send_all(producer, s.kafka.readings_topic, [m for t in range(6, 10) for m in _valid_step(t)])
        n_valid = 10 * 8
        n_dead = sum(n for *_, n in CORPUS)
        want = n_valid + n_dead + 1 + 2 * FLOOD
        wait_for(
            lambda: svc.poll_once(200) is not None and svc.ingestor.ledger.total().received >= want,
            timeout_s=90,
            what=f"{want} readings through the consumer",
        )
        svc.drain()
        ledger = svc.ingestor.ledger.total()
        elapsed = time.monotonic() - t_start
    finally:
        svc.close()
        producer.close()

    # what happened, measured: the ledger, the archive, the dead letters read back from the topic
    expected_dead: dict[str, int] = {}
    for _, _, reason, n in CORPUS:
        expected_dead[reason] = expected_dead.get(reason, 0) + n
    step_ts, values, mask = Archive(s.archive.root, NET).read()
    late_log = Archive(s.archive.root, NET).read_late()
    dup_value = values[5, NET.sensors.index("s0003")].tolist() if len(step_ts) > 5 else None
    letters = _dead_letters(s, len(CORPUS))
    by_offset = {d.offset: d for d in letters}
    wrong = []
    for (name, raw, reason, n), offset in zip(CORPUS, offsets, strict=True):
        d = by_offset.get(offset)
        if d is None:
            reliability.record_input(
                name,
                expected=reason,
                reason="",
                readings=0,
                dead_lettered=False,
                detail="no dead letter came back for it",
            )
            continue
        ok = (d.reason, d.n_readings, d.raw, d.topic) == (
            reason,
            n,
            (raw or b"")[:DEAD_LETTER_RAW_MAX],
            s.kafka.readings_topic,
        )
        wrong += [] if ok else [f"{name}: {d.reason} × {d.n_readings} ({d.detail})"]
        reliability.record_input(
            name, expected=reason, reason=d.reason, readings=d.n_readings, dead_lettered=True, detail=d.detail
        )
    reliability.record_input(
        "late beyond allowed lateness",
        expected="late",
        reason="late" if len(late_log) else "",
        readings=ledger.late,
        dead_lettered=False,
        detail=f"counted late: {ledger.late}; {len(late_log)} reading(s) in the archive's late log",
    )
    reliability.record_input(
        f"duplicate flood ({FLOOD} copies)",
        expected="duplicates",
        reason="duplicates" if ledger.duplicates else "",
        readings=ledger.duplicates,
        dead_lettered=False,
        detail=f"counted as duplicates; the step's values afterwards {dup_value} (sent [55.0, 105.0])",
    )
    missing = sum(1 for o in offsets if o not in by_offset)
    checks = (
        (f"{len(wrong)} classes dead-lettered wrongly", bool(wrong)),
        (
            f"dead letters by reason {ledger.dead_by_reason} ≠ {expected_dead}",
            ledger.dead_by_reason != expected_dead,
        ),
        (f"{ledger.late} late (1 sent)", ledger.late != 1 or len(late_log) != 1),
        (f"{ledger.duplicates} duplicates ({2 * FLOOD} sent)", ledger.duplicates != 2 * FLOOD),
        ("a duplicate changed the step's value", dup_value != [55.0, 105.0]),
        (
            f"archive holds {int(mask.sum())} readings in {len(step_ts)} steps",
            int(mask.sum()) != n_valid or len(step_ts) != 10,
        ),
        ("ledger unbalanced", not svc.ingestor.ledger.balanced()),
    )
    row = reliability.record(
        "bad-input corpus through the consumer",
        lost=n_valid - ledger.windowed,
        missing=missing,
        doubled=len(letters) - len(by_offset),
        detail=f"{len(CORPUS) + 2} classes; {ledger.received} readings = {ledger.windowed} windowed + "
        f"{ledger.dead_lettered} dead-lettered + {ledger.late} late + {ledger.duplicates} duplicates; "
        f"{len(by_offset)} of {len(CORPUS)} corpus messages read back from the dead-letter topic; the "
        f"{n_valid} valid readings sent around the corpus windowed: {ledger.windowed} ({elapsed:.1f} s)",
        anomalies=[what for what, bad in checks if bad],
    )
    assert row.outcome == "survived", (row.outcome, wrong)


# -- fuzz -----------------------------------------------------------------------------------------------

_int64 = st.integers(-(2**63), 2**63 - 1)
_scalar = st.one_of(st.none(), st.booleans(), _int64, st.floats(allow_nan=False), st.text(max_size=8))
_json = st.recursive(
    _scalar,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6), kids, max_size=4),
    max_leaves=12,
)
_messages = st.one_of(
    st.binary(max_size=200),
    _json.map(_j),
    st.fixed_dictionaries(
        {
            "v": st.sampled_from([1, 1, 1, 2, "1", None]),
            "ts": st.one_of(st.integers(T0 - 10 * STEP, T0 + 10 * STEP), _scalar),
            "sensor": st.one_of(st.sampled_from(NET.sensors), st.text(max_size=5), _int64),
        },
        optional={"values": st.dictionaries(st.sampled_from(["speed", "flow", "x"]), _scalar, max_size=3)},
    ).map(_j),
    st.builds(
        lambda ts, sensors, speed: _j({"v": 1, "ts": ts, "sensors": sensors, "values": {"speed": speed}}),
        st.integers(T0, T0 + 10 * STEP),
        st.lists(st.sampled_from([*NET.sensors, "zz"]), max_size=5),
        st.lists(st.one_of(st.none(), st.floats(-10, 200), st.text(max_size=2)), max_size=6),
    ),
)


FUZZ_EXAMPLES = 200


def test_fuzz_decoder_and_ingestor_never_raise_and_balance(reliability: Reliability) -> None:
    seen = {"examples": 0, "messages": 0, "failing": 0, "unbalanced": 0, "unaccounted": 0}

    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(msgs=st.lists(_messages, min_size=1, max_size=25))
    def fuzz(msgs: list[bytes]) -> None:
        seen["examples"] += 1
        seen["messages"] += len(msgs)
        try:
            decoder = Decoder(NET, max_message_bytes=10_000)
            ing = Ingestor(NET, allowed_lateness_ms=STEP, idle_timeout_ms=60_000, now=lambda: T0 + 20 * STEP)
            for i, raw in enumerate(msgs):
                d = decoder.decode(raw)
                assert all(r.reason in REASONS and r.n_readings >= 1 for r in d.rejects)
                assert d.n == 0 or np.isfinite(d.value).all()
                dead = ing.ingest(i % 2, i, raw)
                assert sum(x.n_readings for x in dead) == d.n_rejected
                ing.seal()
            ing.flush_all()
            t = ing.ledger.total()
            gap = t.received - sum(getattr(t, bucket) for bucket in BUCKETS)
            seen["unbalanced"] += not ing.ledger.balanced()
            seen["unaccounted"] += abs(gap)
            assert ing.ledger.balanced(), ing.ledger.snapshot()
        except Exception:
            seen["failing"] += 1
            raise

    try:
        fuzz()
    finally:
        reliability.record(
            "decoder/ingestor fuzz",
            lost=seen["unaccounted"],
            detail=f"hypothesis: {seen['examples']} examples ({FUZZ_EXAMPLES} asked; shrinking adds more when "
            f"one fails), {seen['messages']} messages of ≤ 25 per example; {seen['failing']} examples failed "
            f"(raised or broke an invariant), {seen['unbalanced']} left the ledger unbalanced",
            anomalies=[f"{seen['failing']} failing examples"] if seen["failing"] else [],
        )
