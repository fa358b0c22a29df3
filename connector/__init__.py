"""The connector runtime: what runs a ``streaming_api`` source's connector (one Cloud Run service).

``python -m connector`` reads the runtime spec from ``$HEADWATER_CONNECTOR_SPEC`` (the format is
docs/connector-contract.md) and runs either the REST API poller (connector.rest_api) or the
webhook receiver (connector.webhook); both publish each record to the source's Pub/Sub topic,
where the streaming ingestion pipeline takes over. Like ``beam/``, this package stands alone: it
imports nothing from ``reconciler/`` or ``providers/`` and is all its image (deploy/connector/)
ships. connector/README.md has the overview.
"""
