"""The ``pubsub_to_bigquery`` template; see ``pipeline.py``."""

from beam.pubsub_to_bigquery.pipeline import run

__all__ = ["run"]
