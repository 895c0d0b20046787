"""The bulk single-reading decoder (`stream.columnar`) accepts exactly what the per-message decoder accepts.

Every broken-message class of `tests/test_schema.py` is put between clean messages and ingested both ways
(the per-message reference of `tests/test_ingest_many.py`, through `Decoder.decode`, and
`Ingestor.ingest_many`, through `SinglesDecoder`): the dead letters, ledgers, late readings and sealed
steps must be identical.
"""

from __future__ import annotations

import numpy as np
import pytest

from stream.columnar import SinglesDecoder
from stream.ingest import Ingestor, Message
from tests.test_ingest_many import one_by_one
from tests.test_schema import NET, PER_READING, TS, WHOLE, batch, single


def _ingestor() -> Ingestor:
    return Ingestor(
        NET, allowed_lateness_ms=0, idle_timeout_ms=10**9, now=lambda: TS, max_message_bytes=10_000
    )


def _both_ways(values: list[bytes | None]) -> None:
    recs = [Message(i, v) for i, v in enumerate(values)]
    one, many = _ingestor(), _ingestor()
    dead_one, late_one = one_by_one(one, 0, recs)
    dead_many = many.ingest_many(0, recs)
    assert dead_one == dead_many
    assert late_one == many.take_late()
    assert one.committable() == many.committable()
    a, b = one.ledger.partition(0), many.ledger.partition(0)
    assert [getattr(a, k) for k in a.__slots__] == [getattr(b, k) for k in b.__slots__]
    assert many.ledger.balanced()
    sa, sb = one.flush_all(), many.flush_all()
    assert one.committable() == many.committable() == {0: len(recs)}
    assert [s.step_ts for s in sa] == [s.step_ts for s in sb]
    for x, y in zip(sa, sb, strict=True):
        np.testing.assert_array_equal(x.values, y.values)
        np.testing.assert_array_equal(x.mask, y.mask)


CASES = [(c[0], c[1]) for c in WHOLE] + [(c[0], c[1]) for c in PER_READING]


@pytest.mark.parametrize(("raw"), [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_bulk_path_equals_per_message_path_for_every_broken_class(raw: bytes | None) -> None:
    clean = [single(sensor=f"s000{i}", values={"speed": 10.0 + i, "flow": 100 + i}) for i in range(3)]
    _both_ways([clean[0], raw, clean[1], raw, clean[2]])


def test_a_batch_field_beside_sensor_is_never_taken_in_bulk() -> None:
    """`sensors` next to `sensor`, whatever its value (null included), is `ambiguous_kind` both ways."""
    raws = [single(sensors=v) for v in (None, [], ["s0001"], "s0001", 0)]
    assert not SinglesDecoder(NET, max_message_bytes=10_000).decode(raws, 0, 2**62).taken.any()
    _both_ways([single(), *raws, single(sensor="s0001")])


def test_bulk_path_equals_per_message_path_on_tricky_clean_messages() -> None:
    _both_ways(
        [
            single(values={"speed": 1, "flow": 0}),  # integers
            single(values={"speed": None, "flow": 5.0}),  # null = not measured
            single(values={"speed": None, "flow": None}),  # nothing measured: no reading, no dead letter
            single(extra={"note": "tolerated"}),  # an unknown top-level field
            single(values={"speed": 61.2, "flow": 300}),  # an exact duplicate of the default
            single(),
            single(ts=TS + 7, values={"speed": 2.0}),  # off the step's start: the keyed store
            single(ts=TS + 7, values={"speed": 3.0}),  # same key: a duplicate, the first wins
            batch(),  # a clean batch joins the run
            single(sensor="s0002", values={"speed": 50.0}),  # duplicate of a batch reading
            single(values={"speed": 120.0, "flow": 1e308}),  # boundaries
        ]
    )


def test_singles_decoder_takes_only_clean_singles() -> None:
    dec = SinglesDecoder(NET, max_message_bytes=10_000)
    raws: list[bytes | None] = [
        single(values={"speed": 1, "flow": None}),
        batch(),
        None,
        single(sensor="s9999"),
        single(values={"speed": 500.0}),
        single(values={"humidity": 1.0}),
        single(ts=TS + 10**12),
        single(values={}),
        b'{"v":1,"sensor":"s0001","ts":18446744073709551615,"values":{"speed":1}}',
    ]
    out = dec.decode(raws, TS - 10**9, TS + 10**9)
    assert out.taken.tolist() == [True] + [False] * 8
    assert out.ts[0] == TS and out.sensor[0] == 1
    np.testing.assert_array_equal(out.values[0], [1.0, np.nan])
