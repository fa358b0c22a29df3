"""What a format cannot carry is refused at validate, and a file's compression is read from its
content (a peer accepted a CSV source with nested fields - every row a dead letter - and the
template's ``compression: gzip`` turned each plain ``.csv`` into a BadGzipFile dead letter)."""

from __future__ import annotations

import gzip

import pytest
from helpers import copy_example, edit_yaml

from beam.common import files
from beam.gcs_to_bigquery.readers import ReadRecords


def test_a_csv_source_with_record_or_repeated_fields_fails_validate(tmp_path, hw):
    repo = copy_example(tmp_path, ["orders"])
    edit_yaml(repo / "connectors" / "orders.yaml", lambda d: d["ingestion"].update(format="csv"))
    code, _, err = hw("validate", "--repo", repo)
    assert code == 1 and "connectors/orders.yaml:" in err
    assert "CSV file cannot carry RECORD or REPEATED fields" in err and "items (RECORD, REPEATED)" in err


@pytest.mark.parametrize("gzipped", [pytest.param(False, id="plain-csv"), pytest.param(True, id="gzip-csv")])
def test_csv_files_are_read_under_the_templates_compression_gzip_whatever_their_content(tmp_path, gzipped):
    text = b"order_id,amount\nA-1,10\n"
    path = tmp_path / "orders.csv"
    path.write_bytes(gzip.compress(text) if gzipped else text)
    reader = ReadRecords("csv", "gzip")  # the template's default, on a plain .csv
    reader.setup()
    (info,) = files.match(str(path))
    ((payload, parsed, _, _),) = [record for batch in reader.process(info) for record in batch]
    assert parsed == {"order_id": "A-1", "amount": "10"} and payload == b"A-1,10"
