"""The columnar batch path equals the per-record path: same Silver rows, same dead letters with
the same reasons and details, same counters.

Both paths run on FnApiRunner over the same landing files - generated records with every
dead-letter reason injected, plus lines aimed at the columnar screen's edges (escapes, number
forms, timestamps that are not the fast form or not real instants, duplicated keys, blank and
CRLF lines, invalid UTF-8, duplicates split between the Arrow rows and the checker's rows), in
plain, gzip, truncated-gzip and CSV files, cut into many chunks - under several specs (strict
and lenient, with and without a dedup key, rules with and without an exact vectorized form).
"""

from __future__ import annotations

import datetime as dt
import gzip
import random
from collections import Counter
from pathlib import Path
from typing import Any

import apache_beam as beam
import orjson
import pyarrow as pa
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from beam.common import columnar, files
from beam.common.checker import key_function
from beam.common.columnar import ColumnarValidateAndDedup, _z_instants, eligible, re2_safe
from beam.common.runner import counters
from beam.common.spec import parse_spec
from beam.common.synthetic import SPEC, generate
from beam.common.transforms import ValidateAndDedup, _canonical
from beam.gcs_to_bigquery import readers
from beam.gcs_to_bigquery.readers import ReadChunks, ReadRecords

_COLLECTED: dict[str, list[Any]] = {}  # FnApiRunner runs the DoFns in this process

EDGE_LINES = [
    b"",
    b"   ",
    b"\t\x0b\x0c ",
    b'{"id":"txn-900001","customer_id":"c1","amount":1.5,"timestamp":"2026-11-01T00:00:00Z"}\r',
    b'  {"id":"txn-900002","customer_id":"c1","amount":2,"timestamp":"2026-11-01T00:00:01Z"}  ',
    b'{"id":"txn-900003","customer_id":"c\\u00e9\\u0000\\n\\"","amount":1e2,"timestamp":"2026-11-01T00:00:02Z"}',
    b'{"id":"txn-900004","customer_id":"\\ud83d\\ude00","amount":1,"timestamp":"2026-11-01T00:00:03Z"}',
    b'{"id":"txn-900005","customer_id":"\\ud83d","amount":1,"timestamp":"2026-11-01T00:00:04Z"}',
    '{"id":"txn-900006","customer_id":"Ærø ✓","amount":3.25,"timestamp":"2026-11-01T00:00:05Z"}'.encode(),
    b'{"id":"txn-900007","customer_id":"c\xff","amount":1,"timestamp":"2026-11-01T00:00:06Z"}',
    b'{"id":"txn-900008","customer_id":"c1","amount":-0,"timestamp":"2026-11-01T00:00:07Z"}',
    b'{"id":"txn-900009","customer_id":"c1","amount":-0.0,"timestamp":"2026-11-01T00:00:08Z"}',
    b'{"id":"txn-900010","customer_id":"c1","amount":"12.5","timestamp":"2026-11-01T00:00:09Z","quantity":"7"}',
    b'{"id":"txn-900011","customer_id":"c1","amount":1,"timestamp":"2026-11-01T00:00:10Z","quantity":5.0}',
    b'{"id":"txn-900012","customer_id":"c1","amount":1,"timestamp":"2026-11-01T00:00:11Z","quantity":99999999999999999999}',
    b'{"id":"txn-900013","customer_id":"c1","amount":1,"timestamp":"2026-11-01T00:00:12+00:00"}',
    b'{"id":"txn-900014","customer_id":"c1","amount":1,"timestamp":"2026-11-01T01:00:12+01:00"}',
    b'{"id":"txn-900015","customer_id":"c1","amount":1,"timestamp":"2026-11-01T00:00:13.250Z"}',
    b'{"id":"txn-900016","customer_id":"c1","amount":1,"timestamp":"2026-02-29T00:00:00Z"}',
    b'{"id":"txn-900017","customer_id":"c1","amount":1,"timestamp":"2024-02-29T00:00:00Z"}',
    b'{"id":"txn-900018","customer_id":"c1","amount":1,"timestamp":"2026-11-01T24:00:00Z"}',
    b'{"id":"txn-900019","customer_id":"c1","amount":1,"timestamp":1764547200}',
    b'{"id":"txn-900020","customer_id":"c1","amount":1,"timestamp":"2026-11-01T00:00:14"}',
    b'{"id":"txn-900021","id":"txn-900022","customer_id":"c1","amount":1,"timestamp":"2026-11-01T00:00:15Z"}',
    b"{}",
    b'{"id":"txn-900023","customer_id":{"a":1},"amount":1,"timestamp":"2026-11-01T00:00:16Z"}',
    b'{"id":"txn-900024","customer_id":true,"amount":1,"timestamp":"2026-11-01T00:00:17Z"}',
    b'{"id":"txn-900025","customer_id":"c1","amount":1,"timestamp":"2026-11-01T00:00:18Z","email":"a\\u00a0b@x.io"}',
    b'{"id":"txn-900026","customer_id":"c1","amount":1,"timestamp":"2026-11-01T00:00:19Z","email":"ab@x.io\\n"}',
    '{"id":"txn-\u0661\u0662","customer_id":"c1","amount":1,"timestamp":"2026-11-01T00:00:20Z"}'.encode(),
    b'{"id":"txn-900027","customer_id":"c1","amount":1,"timestamp":"2026-11-01T00:00:21Z","status":null,"email":null}',
    b'{"id":"txn-900028","customer_id":"c1","amount":1,"timestamp":"2026-11-01T00:00:22Z","quantity":-0}',
    b'{"id":"txn-900029","customer_id":"c1","amount":1E-5,"timestamp":"2026-11-01T00:00:23Z","quantity":100}',
    b'{"id":"txn-900030","customer_id":"c1","amount":1,"timestamp":"2026-11-01T00:00:24Z","coupon":"X"}',
    b'[1, 2]',
    b'"just a string"',
    b'{"id":"txn-900031","customer_id":"c1","amount":1,"timestamp":"2026-11-01T00:00:25Z"',
    # The same key twice, one row for the Arrow columns and one for the checker (another
    # timestamp spelling of the same instant): the dedup must see them as one key.
    b'{"id":"txn-900040","customer_id":"c1","amount":9,"timestamp":"2026-11-02T00:00:00Z"}',
    b'{"id":"txn-900040","customer_id":"c1","amount":8,"timestamp":"2026-11-02T00:00:00+00:00"}',
    b'{"id":"txn-900040","customer_id":"c1","amount":7,"timestamp":"2026-11-02T01:00:00+01:00"}',
    b'{"id":"txn-900041","customer_id":"c1","amount":5,"timestamp":"2026-11-02T00:00:00Z"}',
    b'{"id":"txn-900041","customer_id":"c1","amount":5,"timestamp":"2026-11-02T00:00:00Z"}',
    b'{"id":"TX900042","customer_id":"c1","amount":5,"timestamp":"2026-11-02T00:00:00Z","status":"lost"}',
]


def _spec(**changes: Any) -> Any:
    doc = orjson.loads(orjson.dumps(SPEC))
    for key, value in changes.items():
        if value is None:
            doc.pop(key, None)
        elif key == "validation":
            doc["schema"]["validation"] = value
        else:
            doc[key] = value
    return parse_spec(doc)


SPECS = {
    "strict": _spec(),
    "lenient": _spec(validation="lenient"),
    "no_dedup": _spec(deduplication=None),
    "single_key": _spec(deduplication={"key": ["id"]}),
    "float_key": _spec(deduplication={"key": ["amount", "customer_id"]}),
    "no_rules": _spec(data_quality=[], deduplication={"key": ["amount"]}),
    "rules_per_record": _spec(data_quality=[
        {"field": "id", "check": "regex", "pattern": r"^txn-\d+\b"},  # \b: not vectorized
        {"field": "amount", "check": "range", "min": 0.5, "max": 400},
        {"field": "quantity", "check": "allowed_values", "values": [1, 2, 3, 50, 100, True]},
        {"field": "status", "check": "not_null"},
    ]),
    "rules_vectorized": _spec(data_quality=[
        {"field": "quantity", "check": "allowed_values", "values": list(range(1, 60))},
        {"field": "amount", "check": "range", "max": 450},
        {"field": "quantity", "check": "range", "min": 2},
        {"field": "email", "check": "valid_email"},
        {"field": "id", "check": "regex", "pattern": "^txn-(1|2|3)[0-9]*$"},
    ]),
}


def _landing(tmp: Path) -> str:
    """The landing files: plain, gzip, a truncated gzip and a CSV file, under one prefix."""
    payloads, _exp = generate(3000, seed=11, bad_rate=0.2, dup_rate=0.1)
    rng = random.Random(5)
    lines = list(payloads)
    for edge in EDGE_LINES:
        lines.insert(rng.randrange(len(lines)), edge)
    lines += EDGE_LINES[-6:]  # their keys again, in another file region
    third = len(lines) // 3
    (tmp / "a.json").write_bytes(b"\n".join(lines[:third]) + b"\n")
    (tmp / "b.json").write_bytes(b"\r\n".join(lines[third:2 * third]))  # CRLF, no final newline
    (tmp / "c.json.gz").write_bytes(gzip.compress(b"\n".join(lines[2 * third:]) + b"\n"))
    broken = gzip.compress(b"\n".join(payloads[:1500]) + b"\n")
    (tmp / "d.json.gz").write_bytes(broken[: len(broken) * 2 // 3])  # truncated part-way
    (tmp / "e.csv").write_text("id,customer_id,amount,timestamp\ntxn-1,c1,2.5,2026-11-01T00:00:00Z\n"
                               "txn-2,,1,2026-11-01T00:00:00Z\ntxn-3,c1\n")
    return str(tmp) + "/"


class _Collect(beam.DoFn):
    def __init__(self, name: str) -> None:
        self.name = name

    def process(self, element: Any) -> None:
        _COLLECTED.setdefault(self.name, []).append(element)


def _run(spec: Any, pattern: str, *, use_columnar: bool, tag: str, rows: str = columnar.ROWS_AS_DICTS
         ) -> tuple[list[bytes], list[Any], dict[str, int]]:
    _COLLECTED.pop(f"{tag}-rows", None)
    _COLLECTED.pop(f"{tag}-dead", None)
    p = beam.Pipeline(runner=FnApiRunner())
    listed = p | beam.Create(files.match(pattern))
    if use_columnar:
        out = listed | "ReadChunks" >> beam.ParDo(ReadChunks(None, "auto")) | "Validate" >> ColumnarValidateAndDedup(
            spec, rows)
        if rows == columnar.ROWS_AS_ARROW:  # what gcs_to_bigquery's Silver sink gets, as the dicts they hold
            out = {**out, "valid": out["valid"] | "ToRows" >> beam.FlatMap(lambda c: columnar.to_rows(c.table))}
    else:
        out = listed | "ReadRecords" >> beam.ParDo(ReadRecords(None, "auto")) | "Validate" >> ValidateAndDedup(
            spec, streaming=False)
    _ = out["valid"] | "Rows" >> beam.ParDo(_Collect(f"{tag}-rows"))
    _ = out["dead_letters"] | "Dead" >> beam.ParDo(_Collect(f"{tag}-dead"))
    result = p.run()
    result.wait_until_finish()
    rows = sorted(_canonical(r) for r in _COLLECTED.get(f"{tag}-rows", []))
    dead = sorted(tuple(d) for d in _COLLECTED.get(f"{tag}-dead", []))
    return rows, dead, counters(result)


@pytest.fixture(scope="module")
def landing(tmp_path_factory: pytest.TempPathFactory) -> str:
    return _landing(tmp_path_factory.mktemp("landing"))


@pytest.mark.parametrize("name", sorted(SPECS))
def test_columnar_equals_per_record(name: str, landing: str, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = SPECS[name]
    assert eligible(spec)
    monkeypatch.setattr(readers, "CHUNK_BYTES", 7_000)  # many chunks per file, both reading modes
    rows, dead, counts = _run(spec, landing, use_columnar=False, tag=f"{name}-records")
    c_rows, c_dead, c_counts = _run(spec, landing, use_columnar=True, tag=f"{name}-columnar")
    a_rows, a_dead, a_counts = _run(spec, landing, use_columnar=True, tag=f"{name}-arrow", rows=columnar.ROWS_AS_ARROW)

    assert c_rows == rows and a_rows == rows
    assert c_dead == dead and a_dead == dead
    per_record = c_counts.pop("records_checked_per_record")
    assert a_counts.pop("records_checked_per_record") == per_record
    assert c_counts == counts and a_counts == counts
    # Every reason the generator injects, and the accounting identity, on both paths.
    reasons = Counter(d[1] for d in dead)
    if name == "strict":
        assert set(reasons) >= {"unparseable", "not_an_object", "missing_required", "wrong_type", "unknown_field",
                                "dq_not_null", "dq_valid_email", "dq_positive_number", "dq_range", "dq_regex",
                                "dq_allowed_values"}
        assert counts["duplicates"] > 0 and counts["blank_lines"] > 0 and counts["unreadable_files"] == 1
        assert per_record < counts["records_in"] / 2  # the Arrow columns did most of the work
    invalid = sum(v for k, v in counts.items() if k.startswith("invalid_"))
    assert counts["records_in"] == counts["valid"] + counts.get("duplicates", 0) + invalid


def test_timestamp_clearing_is_fromisoformat() -> None:
    """A stamp is cleared exactly when it has the ``...Z`` form and ``datetime.fromisoformat``
    takes it; the cleared ones become the checker's canonical text."""
    import re

    rng = random.Random(3)
    values = [f"{rng.randrange(1000, 10000):04d}-{rng.randrange(0, 14):02d}-{rng.randrange(0, 33):02d}T"
              f"{rng.randrange(0, 26):02d}:{rng.randrange(0, 62):02d}:{rng.randrange(0, 62):02d}Z" for _ in range(20000)]
    values += ["2000-02-29T00:00:00Z", "1900-02-29T00:00:00Z", "2024-02-29T23:59:59Z", "2023-02-29T00:00:00Z",
               "0999-01-01T00:00:00Z", "2026-11-01T00:00:00z", "2026-11-01 00:00:00Z", "2026-11-01T00:00:00+00:00",
               "2026-11-01T00:00:0AZ", "2026-1١-01T00:00:00Z", "2026-11-01T00:00:00ZZ", "", "x" * 20, None,
               "2026-11-01T00:00:00.5Z", "2026-11-01T00:00:00"]
    rng.shuffle(values)
    col = pa.array(values, pa.string())
    cleared, canonical = _z_instants(col)
    for value, ok, canon in zip(values, cleared.tolist(), canonical.to_pylist(), strict=True):
        if value is None:
            assert not ok and canon is None
            continue
        try:
            instant = dt.datetime.fromisoformat(value)
            valid = re.fullmatch(columnar._TIMESTAMP_Z, value) is not None
        except ValueError:
            valid = False
        assert ok == valid, value
        if ok:
            assert canon == instant.isoformat()
    sliced = col.slice(7)
    assert _z_instants(sliced)[0].tolist() == cleared[7:].tolist()


def test_regex_rules_vectorized_only_where_re2_agrees() -> None:
    assert re2_safe("^txn-[0-9]+$")
    assert re2_safe(r"^[A-Z]{2}\d{3}(-\w+)?$")
    assert re2_safe("a|b.c*?")
    for pattern in (r"\bword", r"\s+", r"[^a]", r"\D", "(?i)abc", "(?=a)b", r"(a)\1", r"\Aabc\Z"):
        assert not re2_safe(pattern), pattern


def test_eligibility() -> None:
    assert eligible(SPECS["strict"])
    nested = _spec()
    assert not eligible(parse_spec({**orjson.loads(orjson.dumps(SPEC)), "schema": {"fields": [
        {"name": "id", "type": "STRING", "mode": "REQUIRED"},
        {"name": "tags", "type": "STRING", "mode": "REPEATED"}]}, "deduplication": {"key": ["id"]},
        "data_quality": []}))
    assert eligible(nested)
    assert columnar.line_pattern(nested.fields).startswith("^")


def test_screened_numbers_parse_as_orjson_does() -> None:
    """Every FLOAT64 and INT64 token the screen lets through becomes the same value in Arrow's
    JSON reader as in orjson + the validator (float(int) for an integer in a FLOAT64 field)."""
    import re

    import pyarrow.json as pajson

    rng = random.Random(9)
    number, integer = re.compile(columnar._NUMBER + "$"), re.compile(columnar._INT + "$")
    floats, ints = [], []
    for _ in range(20000):
        mantissa = str(rng.randrange(10 ** rng.randrange(1, 17)))
        if rng.random() < 0.6:
            mantissa += "." + str(rng.randrange(10 ** rng.randrange(1, 19))).zfill(rng.randrange(1, 19))
        if rng.random() < 0.3:
            mantissa += rng.choice("eE") + rng.choice(["", "+", "-"]) + str(rng.randrange(100))
        text = rng.choice(["", "-"]) + mantissa
        if number.match(text):
            floats.append(text)
        digits = rng.choice(["", "-"]) + str(rng.randrange(10 ** rng.randrange(1, 19)))
        if integer.match(digits):
            ints.append(digits)
    assert len(floats) > 10000 and len(ints) > 15000
    lines = "\n".join(f'{{"f": {f}, "i": {i}}}' for f, i in zip(floats, ints, strict=False)).encode()
    schema = pa.schema([("f", pa.float64()), ("i", pa.int64())])
    table = pajson.read_json(pa.BufferReader(lines), pajson.ReadOptions(use_threads=False),
                             pajson.ParseOptions(explicit_schema=schema))
    for text, got in zip(floats, table.column("f").to_pylist(), strict=False):
        want = orjson.loads(text)
        want = float(want)  # the validator's FLOAT64: float(int) for an integer
        assert repr(got) == repr(want), text
    for text, got in zip(ints, table.column("i").to_pylist(), strict=False):
        assert got == orjson.loads(text), text


def test_a_line_arrow_will_not_read_costs_its_neighbourhood_not_its_chunk() -> None:
    """A screened line Arrow's reader rejects (a duplicated key) sends at most PARSE_LEAF lines
    of its chunk to the checker; the verdicts are the checker's either way (the test above)."""
    spec = SPECS["strict"]
    payloads, _exp = generate(5000, bad_rate=0.0, dup_rate=0.0)
    payloads[2345] = b'{"id":"txn-1","id":"txn-2","customer_id":"c1","amount":1,"timestamp":"2026-11-01T00:00:00Z"}'
    checker = columnar.ColumnarChecker(spec.fields, spec.validation, spec.quality_rules, spec.dedup.key)
    checked = checker(columnar.FileChunk("f.json", (), 1, b"\n".join(payloads) + b"\n", columnar.BLANK_UNCOUNTED))
    assert 1 <= checked.checked_per_record <= columnar.PARSE_LEAF
    # orjson keeps a duplicated key's last value: the line is a valid row, like the others.
    assert checked.records_in == 5000 and len(checked.table) == 5000 and not checked.reasons


def _reference_dedup(table: pa.Table, key_paths: tuple[str, ...], paths: tuple[str, ...]) -> list[bytes]:
    """The per-record rule: per key (``key_function``), the row whose canonical JSON sorts first
    (the message id ``<path>#<line>`` made here, not by ``with_message_id``)."""
    best: dict[str, bytes] = {}
    key_of = key_function(key_paths)
    for row in columnar.to_rows(table.drop_columns([columnar.HASH])):
        row["_message_id"] = f"{paths[row.pop(columnar.FILE)]}#{row.pop(columnar.LINE)}"
        canon = _canonical(row)
        key = key_of(row)
        if key not in best or canon < best[key]:
            best[key] = canon
    return sorted(best.values())


@pytest.mark.parametrize("case", ["plain", "collisions", "quoted_path", "name_before_message_id", "prefix_paths",
                                  "one_file"])
def test_dedup_table_keeps_the_per_record_choice(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``dedup_table`` keeps the row the per-record path keeps, by its vectorized shortcut
    (``_first_by_message_id``) where that applies and in Python where it does not."""
    rng = random.Random(case)
    n = 3000
    paths = ("gs://b/a.json", "gs://b/a.json#1 x", 'gs://b/"q".json') if case != "prefix_paths" else ("a", "a#1 ", "a#1!")
    if case != "quoted_path":
        paths = tuple(p.replace('"', "") for p in paths)
    if case == "one_file":  # with_message_id's one-path form
        paths = paths[:1]
    name = "A" if case == "name_before_message_id" else "amount"
    table = pa.table({
        "id": [f"txn-{rng.randrange(400)}" for _ in range(n)],
        name: [rng.choice([0.0, -0.0, 1.5, 2.5, None]) for _ in range(n)],
        "ts": [rng.choice(["2026-11-01T00:00:00+00:00", "2026-11-02T00:00:00+00:00", None]) for _ in range(n)],
        columnar.FILE: pa.array([rng.randrange(len(paths)) for _ in range(n)], pa.int32()),
        columnar.LINE: pa.array([rng.choice([1, 2, 5, 10, 11, 100]) + i * 1000 * (i % 2) for i in range(n)], pa.int64()),
    })
    key = ("id", name, "ts")
    h = columnar.key_hash(table, key)
    if case == "collisions":
        h = h % 7  # many keys per hash: the key columns tell them apart
    table = table.append_column(columnar.HASH, pa.array(h, pa.uint64()))
    shortcut = []
    real = columnar._first_by_message_id
    monkeypatch.setattr(columnar, "_first_by_message_id",
                        lambda *a: shortcut.append(r := real(*a)) or r)
    got = sorted(_canonical(r) for r in columnar.to_rows(columnar.dedup_table(table, key, paths)))
    assert got == _reference_dedup(table, key, paths)
    assert (shortcut[0] is not None) == (case in ("plain", "prefix_paths", "one_file"))
