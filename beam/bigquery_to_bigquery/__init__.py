"""The ``bigquery_to_bigquery`` template; see ``pipeline.py``."""

from beam.bigquery_to_bigquery.pipeline import run

__all__ = ["run"]
