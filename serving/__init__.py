"""Runtimes that serve the platform's data to its consumers (issue 12, "Serving Layer").

Like ``beam/`` and ``connector/``, ``serving/`` stands alone: it imports nothing from
``reconciler/``, ``providers/``, ``beam/`` or ``connector/``, and is all its images ship.
"""
