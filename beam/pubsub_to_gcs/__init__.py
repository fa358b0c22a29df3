"""The ``pubsub_to_gcs`` template; see ``pipeline.py``."""

from beam.pubsub_to_gcs.pipeline import run

__all__ = ["run"]
