"""Generated transaction records with injected bad and duplicate ones, and the expected counts.

The tests (accounting property) and the benchmark both need data whose fate is known in
advance: ``generate(n)`` returns ``n`` JSON payloads for :data:`SPEC` (the seed's
``example_source`` plus a few fields that give every data-quality check something to test), and
an :class:`Expected` that says how many must come out valid, duplicate, and invalid by reason.

Every injected bad record is a good record with exactly one thing broken, chosen so that the
broken thing is also the *first* failure (schema checks run before quality rules, rules in
order), so its expected reason is unambiguous. Duplicates repeat an earlier good record's key
(``id`` + ``timestamp``); half of them are byte-identical re-sends, half carry a different
amount, as a corrected re-delivery would.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson

SPEC: dict[str, Any] = {
    "version": 1,
    "source_id": "example_source",
    "project": "hw-example",
    "schema": {
        "version": "1.0",
        "validation": "strict",
        "fields": [
            {"name": "id", "type": "STRING", "mode": "REQUIRED", "description": "Unique transaction ID"},
            {"name": "customer_id", "type": "STRING", "mode": "NULLABLE", "description": "Customer identifier"},
            {"name": "amount", "type": "FLOAT64", "mode": "REQUIRED", "description": "Transaction amount in USD"},
            {"name": "timestamp", "type": "TIMESTAMP", "mode": "REQUIRED", "description": "Transaction timestamp (UTC)"},
            {"name": "email", "type": "STRING", "mode": "NULLABLE"},
            {"name": "status", "type": "STRING", "mode": "NULLABLE"},
            {"name": "quantity", "type": "INT64", "mode": "NULLABLE"},
        ],
    },
    "deduplication": {"key": ["id", "timestamp"], "window_seconds": 600},
    "data_quality": [
        {"field": "customer_id", "check": "not_null"},
        {"field": "email", "check": "valid_email"},
        {"field": "amount", "check": "positive_number"},
        {"field": "quantity", "check": "range", "min": 1, "max": 100},
        {"field": "id", "check": "regex", "pattern": "^txn-[0-9]+$"},
        {"field": "status", "check": "allowed_values", "values": ["new", "paid", "refunded"]},
    ],
    "bronze": {"table": "bronze.example_source"},
    "silver": {"table": "silver.example_source"},
    "dead_letter": {"topic": "projects/hw-example/topics/example_source-dead-letter"},
}


def _break(rec: dict[str, Any], reason: str) -> bytes:
    """A payload that fails with exactly ``reason``, made from a good record."""
    r = dict(rec)
    if reason == "unparseable":
        return orjson.dumps(r)[:-7]  # truncated mid-document
    if reason == "not_an_object":
        return orjson.dumps([r["id"], r["amount"]])
    if reason == "missing_required":
        del r["amount"]
    elif reason == "wrong_type":
        r["quantity"] = "a dozen"
    elif reason == "unknown_field":
        r["coupon"] = "SPRING"
    elif reason == "dq_not_null":
        r["customer_id"] = None
    elif reason == "dq_valid_email":
        r["email"] = "user.example.com"
    elif reason == "dq_positive_number":
        r["amount"] = -r["amount"]
    elif reason == "dq_range":
        r["quantity"] = 1000
    elif reason == "dq_regex":
        r["id"] = r["id"].replace("txn-", "TX")
    elif reason == "dq_allowed_values":
        r["status"] = "lost"
    else:
        raise ValueError(reason)
    return orjson.dumps(r)


BAD_REASONS = (
    "unparseable", "not_an_object", "missing_required", "wrong_type", "unknown_field",
    "dq_not_null", "dq_valid_email", "dq_positive_number", "dq_range", "dq_regex",
    "dq_allowed_values",
)


@dataclass
class Expected:
    records_in: int = 0
    valid: int = 0
    duplicates: int = 0
    invalid: Counter[str] = field(default_factory=Counter)
    rejects: list[tuple[bytes, str]] = field(default_factory=list)  # (payload, reason) per bad record


def generate(n: int, *, seed: int = 7, bad_rate: float = 0.05, dup_rate: float = 0.05) -> tuple[list[bytes], Expected]:
    rng = random.Random(seed)
    payloads: list[bytes] = []
    good: list[dict[str, Any]] = []
    exp = Expected(records_in=n)
    statuses = ("new", "paid", "refunded")
    for i in range(n):
        roll = rng.random()
        if roll < dup_rate and good:
            orig = good[rng.randrange(len(good))]
            dup = orig if rng.random() < 0.5 else {**orig, "amount": round(orig["amount"] + 1.0, 2)}
            payloads.append(orjson.dumps(dup))
            exp.duplicates += 1
            continue
        rec = {
            "id": f"txn-{i}",
            "customer_id": f"c{rng.randrange(1000)}",
            "amount": round(rng.uniform(0.5, 500.0), 2),
            "timestamp": f"2026-11-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:{(i * 7) % 60:02d}Z",
            "email": f"user{i}@example.com",
            "status": statuses[i % 3],
            "quantity": 1 + i % 100,
        }
        if roll < dup_rate + bad_rate:
            reason = BAD_REASONS[i % len(BAD_REASONS)]
            payloads.append(_break(rec, reason))
            exp.invalid[reason] += 1
            exp.rejects.append((payloads[-1], reason))
            continue
        payloads.append(orjson.dumps(rec))
        good.append(rec)
        exp.valid += 1
    return payloads, exp
