"""The third-party data API (issue 12, "Third-party data API"): ``python -m serving.api``.

Serves the Gold data of the sources that declare ``serving.third_party_api`` through their
authorized views in the ``api`` dataset, to OAuth 2.0 clients, rate-limited, as JSON, CSV or
Parquet. The contract with the reconciler: docs/data-api-contract.md; the package's modules:
serving/api/README.md.
"""
