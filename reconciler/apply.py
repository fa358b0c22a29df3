"""Apply: execute a plan through the providers.

Apply consumes a `Plan` and nothing else (plus the providers that own each kind). Changes run
in the plan's order, one stage per kind (buckets, datasets, topics, subscriptions, tables; deletes
in reverse), the changes of a stage in parallel up to ``max_workers``.

* A create that finds the resource already there is looked at (`providers.base.Reader`): if it
  is this platform's (an earlier apply died after the call), it is converged with an update of
  the declared fields that differ; if it is not (someone made it between plan and apply), the
  change fails and nothing is sent: the next plan shows it as an ``import`` to adopt explicitly.
  A provider that cannot read converges as before (only the local runner, whose records are
  its own).
* An import (an adopted resource) is an update of the declared fields that differ, with
  headwater's labels added to the owner's.
* A replace deletes, then creates; deleting a resource that is already leaving (a draining job)
  waits until it has gone.
* A failure does not stop independent work: changes that depend on a failed one are skipped,
  the rest go on, and the result says which is which. Providers are idempotent, so running
  apply again after a failure or a crash converges.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import groupby

from providers.base import Provider, read_with
from providers.errors import AlreadyExists, PermanentError, ProviderError
from reconciler.plan import Action, Change, Plan, diff_resource, owner_of
from reconciler.resources import LEAVING, PLATFORM_KEY, Kind

OK, FAILED, SKIPPED = "ok", "failed", "skipped"


@dataclass(frozen=True)
class Outcome:
    address: str
    kind: Kind
    action: Action
    status: str
    error: str | None = None
    seconds: float = 0.0


@dataclass
class ApplyResult:
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(o.status == OK for o in self.outcomes)

    def count(self, status: str) -> int:
        return sum(1 for o in self.outcomes if o.status == status)

    def summary(self) -> str:
        text = f"{self.count(OK)} succeeded, {self.count(FAILED)} failed, {self.count(SKIPPED)} skipped"
        return ("Apply complete: " if self.ok else "Apply incomplete: ") + text


Listener = Callable[[Outcome], None]


def apply_plan(
    plan: Plan,
    providers: Mapping[Kind, Provider],
    *,
    max_workers: int = 8,
    on_outcome: Listener | None = None,
) -> ApplyResult:
    """Execute the plan's actionable changes; see the module docstring."""
    result = ApplyResult()
    failed: set[str] = set()
    changes = plan.actionable
    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        # The plan is already ordered; consecutive changes of one kind and direction form a stage.
        for _, stage in groupby(changes, key=lambda c: (c.kind, c.action == Action.DELETE)):
            stage = list(stage)
            runnable = []
            for change in stage:
                blocker = next((dep for dep in change.depends_on if dep in failed), None)
                if blocker:
                    outcome = Outcome(change.address, change.kind, change.action, SKIPPED,
                                      f"skipped: depends on {blocker}, which failed")
                    _record(result, outcome, failed, on_outcome)
                else:
                    runnable.append(change)
            for outcome in pool.map(lambda c: _execute(c, providers[c.kind]), runnable):
                _record(result, outcome, failed, on_outcome)
    return result


def _record(result: ApplyResult, outcome: Outcome, failed: set[str], listener: Listener | None) -> None:
    result.outcomes.append(outcome)
    if outcome.status != OK:
        failed.add(outcome.address)
    if listener:
        listener(outcome)


def _execute(change: Change, provider: Provider) -> Outcome:
    started = time.monotonic()
    try:
        if change.action == Action.CREATE:
            _create(change, provider)
        elif change.action in (Action.UPDATE, Action.IMPORT):
            provider.update(change.desired, list(change.update_fields))
        elif change.action == Action.REPLACE:
            provider.delete(change.live)
            _create(change, provider)
        elif change.action == Action.DELETE:
            provider.delete(change.live)
        status, error = OK, None
    except ProviderError as exc:
        status, error = FAILED, str(exc)
    except Exception as exc:  # noqa: BLE001 - a bug in one provider must not stop other changes
        status, error = FAILED, f"unexpected {type(exc).__name__}: {exc}"
    return Outcome(change.address, change.kind, change.action, status, error, time.monotonic() - started)


def _create(change: Change, provider: Provider) -> None:
    resource = change.desired
    try:
        provider.create(resource)
    except AlreadyExists as exc:
        immutable = provider.immutable_fields.get(resource.kind, frozenset())
        found = [r for r in read_with(provider, resource.kind, [resource.name]) if r.address == resource.address]
        if not found and getattr(provider, "read", None) is not None:
            raise  # it exists but cannot be read (another project's bucket name, say): not ours to touch
        if found:
            live = found[0]
            if not live.managed or live.labels.get(PLATFORM_KEY) != resource.labels.get(PLATFORM_KEY):
                raise PermanentError(
                    f"{resource.address} already exists and is {owner_of(live)}: left untouched (the plan said "
                    f"create; plan again to see it, and adopt it explicitly: headwater adopt {resource.address})"
                ) from exc
            if live.status.get(LEAVING):
                # It started leaving (a drain) after the plan: wait until it has gone, then create -
                # what the plan would have said, never an update of a job on its way out.
                provider.delete(live)
                provider.create(resource)
                return
            # Ours (an earlier apply died after the create): converge what differs.
            diff = diff_resource(resource, live, immutable)
            if diff.replace_paths:
                raise PermanentError(f"{resource.address} already exists with {', '.join(diff.replace_paths)} "
                                     "different, which cannot change in place; plan again") from exc
            if diff.update_fields:
                provider.update(resource, list(diff.update_fields))
            return
        # A provider that cannot read (the local runner: its records are its own): converge every
        # declared field that can change in place.
        fields = [key for key in resource.spec
                  if not any(entry == key or entry.startswith(key + ".") for entry in immutable)] + ["labels"]
        provider.update(resource, fields)
