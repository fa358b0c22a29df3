"""The ``datastream_to_bigquery`` template; see ``pipeline.py``."""

from beam.datastream_to_bigquery.pipeline import run

__all__ = ["run"]
