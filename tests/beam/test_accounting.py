"""Every record accounted for: in = valid + invalid + duplicates, and each invalid record reaches
the dead letters with its original payload and its reason.

Generated data (``beam.common.synthetic``) with injected bad and duplicate records goes
through the shared ValidateAndDedup transform:

* batch, on FnApiRunner, both as single elements (``Create``) and as the batches a file reader
  emits (the path that runs ``process_batch``);
* streaming, on BundleBasedDirectRunner with a TestStream (its counters are unreliable - only
  the first bundle's are reported - so there the outputs themselves are counted).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_stream import TestStream as EventStream  # not collected by pytest
from apache_beam.testing.util import BeamAssertException, assert_that

from beam.common import files
from beam.common.runner import counters
from beam.common.spec import parse_spec
from beam.common.synthetic import SPEC, Expected, generate
from beam.common.transforms import ValidateAndDedup, key_function
from beam.gcs_to_bigquery.readers import ReadRecords

SOURCE = parse_spec(SPEC)


def _is(expected: Any, what: str) -> Callable[[Any], None]:
    def check(actual: Any) -> None:
        if actual != expected:
            raise BeamAssertException(f"{what}: expected {expected!r}, got {actual!r}")
    return check


def _expect_outputs(out: dict[str, Any], exp: Expected) -> None:
    """Assertions on the outputs themselves, valid on any runner (matchers see whole outputs)."""
    key_of = key_function(SOURCE.dedup.key)  # type: ignore[union-attr]

    def valid_rows(rows: list[dict[str, Any]]) -> None:
        _is(exp.valid, "valid rows")(len(rows))
        _is(exp.valid, "distinct dedup keys among them")(len({key_of(r) for r in rows}))

    def dead_letters(letters: list[Any]) -> None:
        # Exactly the injected bad records: the same payloads, each with its reason.
        _is(sorted(exp.rejects), "dead letters (payload, reason)")(sorted((d.payload, d.reason) for d in letters))

    assert_that(out["valid"], valid_rows, label="AllValidRowsOnce")
    assert_that(out["dead_letters"], dead_letters, label="EveryRejectIsADeadLetter")


def _expect_counters(result: Any, exp: Expected) -> None:
    got = counters(result)
    invalid = {k.removeprefix("invalid_"): v for k, v in got.items() if k.startswith("invalid_")}
    assert got["records_in"] == exp.records_in
    assert (got["valid"], got["duplicates"], invalid) == (exp.valid, exp.duplicates, exp.invalid)
    assert got["records_in"] == got["valid"] + got["duplicates"] + sum(invalid.values())


def test_batch_accounting_from_single_elements() -> None:
    payloads, exp = generate(3_000, seed=1)
    p = beam.Pipeline(runner=FnApiRunner())
    raw = p | beam.Create([(x, None, f"mem#{i}", ()) for i, x in enumerate(payloads)])
    _expect_outputs(raw | ValidateAndDedup(SOURCE, streaming=False), exp)
    result = p.run()
    result.wait_until_finish()
    _expect_counters(result, exp)


def test_batch_accounting_from_file_batches(tmp_path: Path) -> None:
    payloads, exp = generate(30_000, seed=2, bad_rate=0.1, dup_rate=0.1)
    path = tmp_path / "landing.json"
    path.write_bytes(b"\n".join(payloads) + b"\n\n")  # a trailing blank line is not a record
    p = beam.Pipeline(runner=FnApiRunner())
    raw = p | beam.Create(files.match(str(path))) | beam.ParDo(ReadRecords("json", "none"))
    _expect_outputs(raw | ValidateAndDedup(SOURCE, streaming=False), exp)
    result = p.run()
    result.wait_until_finish()
    _expect_counters(result, exp)
    assert counters(result)["blank_lines"] == 1


def _streaming_pipeline() -> beam.Pipeline:
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    return beam.Pipeline(runner=BundleBasedDirectRunner(), options=options)


def test_streaming_accounting_with_test_stream() -> None:
    payloads, exp = generate(1_500, seed=3, bad_rate=0.1, dup_rate=0.1)
    stream = EventStream()
    for start in range(0, len(payloads), 250):  # several bundles, processing time moving on
        stream = stream.add_elements([(x, None, f"msg-{start + i}", ()) for i, x in enumerate(payloads[start:start + 250])])
        stream = stream.advance_processing_time(1)
    stream = stream.advance_watermark_to_infinity()
    p = _streaming_pipeline()
    _expect_outputs(p | stream | ValidateAndDedup(SOURCE, streaming=True), exp)
    p.run().wait_until_finish()  # the accounting identity then follows from the counts:
    assert exp.records_in == exp.valid + sum(exp.invalid.values()) + exp.duplicates


@pytest.mark.parametrize(("gap_seconds", "passes"), [(30, 1), (700, 2)], ids=["within-window-dropped", "after-window-kept"])
def test_streaming_dedup_forgets_a_key_after_its_window(gap_seconds: int, passes: int) -> None:
    record = b'{"id": "txn-1", "customer_id": "c1", "amount": 5, "timestamp": "2026-11-26T10:00:00Z"}'
    stream = (
        EventStream()
        .add_elements([(record, None, "m1", ())])
        .advance_processing_time(gap_seconds)
        .add_elements([(record, None, "m2", ())])
        .advance_watermark_to_infinity()
    )
    p = _streaming_pipeline()
    # The test clock starts at 0; the dedup's timer must be set on that clock (window: 600 s).
    out = p | stream | ValidateAndDedup(SOURCE, streaming=True, clock=lambda: 0.0)
    assert_that(out["valid"], lambda rows: _is(passes, "rows passed")(len(rows)))
    p.run().wait_until_finish()


@pytest.mark.parametrize("first", ["amount-5-first", "amount-6-first"])
def test_duplicates_keep_the_same_row_whatever_the_order(first: str) -> None:
    # Same id, and the two timestamps are the same instant: one key. The kept row is decided
    # by content (the smaller canonical JSON), not by which one arrived first.
    a = b'{"id": "txn-1", "customer_id": "c1", "amount": 5, "timestamp": "2026-11-26T10:00:00Z"}'
    b = b'{"id": "txn-1", "customer_id": "c1", "amount": 6, "timestamp": "2026-11-26T12:00:00+02:00"}'
    order = [a, b] if first == "amount-5-first" else [b, a]
    p = beam.Pipeline(runner=FnApiRunner())
    out = p | beam.Create([(x, None, "", ()) for x in order]) | ValidateAndDedup(SOURCE, streaming=False)
    assert_that(out["valid"], lambda rows: _is([5.0], "kept amount")([r["amount"] for r in rows]))
    p.run().wait_until_finish()


def test_reasons_cover_every_kind_of_bad_record() -> None:
    _, exp = generate(3_000, seed=1)
    assert set(exp.invalid) == {
        "unparseable", "not_an_object", "missing_required", "wrong_type", "unknown_field", "dq_not_null",
        "dq_valid_email", "dq_positive_number", "dq_range", "dq_regex", "dq_allowed_values",
    }
    assert Counter(r for _, r in exp.rejects) == exp.invalid


def test_chunk_coder_round_trips_rows_and_falls_back_to_pickle() -> None:
    from decimal import Decimal

    from beam.common.records import Chunk, ChunkCoder

    coder = ChunkCoder()
    plain = Chunk(["k1"], [{"id": "a", "n": 1, "x": 1.5, "ok": True, "tags": ["t"], "rec": {"z": None}}])
    odd = Chunk(["k2"], [{"price": Decimal("1.10")}])  # not marshal-able: pickled instead
    for chunk, tag in ((plain, b"M"), (odd, b"P")):
        encoded = coder.encode(chunk)
        assert encoded[:1] == tag
        decoded = coder.decode(encoded)
        assert decoded == chunk and type(decoded) is Chunk
