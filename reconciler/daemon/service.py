"""The daemon: converge on every new commit, watch for drift in between.

`Daemon` wires the core (validate → plan → apply through `reconciler.engine.Engine`) to a git
branch, a lease, alerts, metrics and an HTTP server. It adds *when* to reconcile and *what to
do with the result*; every decision about *what* may change stays in the core, which the daemon
calls and never re-implements (prune per policy, deletion protection, the empty-commit and
max-delete guards, the schema-evolution gate). The daemon only ever *removes* changes from a
plan before applying it (suspended sources; self-heal keeps updates and creates), so it cannot
do anything the core would not.

Three threads, one job each:

* the **worker** runs every reconcile, one at a time, so sync and drift never race:
  - *sync pass* (on the poll interval, at once on a push webhook, and to retry a failed apply
    with exponential backoff): fetch the branch; on a new head, check it out and validate it.
    An invalid revision is never applied: it is reported (status, metric, log, alert) and the
    daemon keeps serving the last good revision until the branch moves again. A valid one is
    planned and, if this daemon holds the lease and nothing is suspended, applied. It becomes
    the *served* revision unless the core refused its plan.
  - *drift pass* (on the drift interval, with jitter so that replicas and restarts spread out):
    observe, compare with the served revision, update status and metrics, alert on change, and
    with ``--self-heal`` repair what drifted by updates (and re-creation of declared resources
    that disappeared) only: never deletes, never replacements.
  - *incremental convergence* (issue 14, `reconciler.incremental`): the daemon keeps an observed-state
    cache (`Daemon.cache`). A sync plans a new revision against it, re-reading only what the commit
    touches, when the previously planned revision's compiled desired state is known and the cache
    is younger than ``--cache-max-age``; otherwise (and on ``--no-incremental``) it observes in
    full. The check after an apply reads only what was applied. Every drift pass observes in full
    and refreshes the cache, so drift outside a commit is found there. `Daemon.invalidate`
    (the Cloud Asset Inventory feed's hook) marks addresses changed on GCP and asks for a drift
    check of just those.
* the **lease keeper** acquires or renews the applier lease (`reconciler.daemon.lease`); a
  daemon that does not hold it observes and reports but never applies;
* the **HTTP server** (`reconciler.daemon.server`) answers health, status, metrics and webhooks.

Shutdown (SIGTERM; Cloud Run allows 10 s): stop taking work; the apply in flight finishes the
API calls already running while the changes not yet started are abandoned (they fail fast
with "shutting down", and their dependents are skipped); then the lease is released and the
process exits 0. The next start re-plans from live state and converges, because apply is
idempotent: a crash mid-apply is as safe as a clean stop.

On start, if the branch head is invalid and no revision is served yet, the newest valid commit
among the head's first-parent ancestors (up to `HISTORY_LIMIT`) is served instead: the last
good revision survives restarts without any state of its own.
"""

from __future__ import annotations

import dataclasses
import random
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import IO, Any

import structlog

from providers import errors as provider_errors
from providers.base import Provider, health_with, losses_with, read_with
from providers.errors import ProviderError
from reconciler.apply import OK, ApplyResult, Outcome
from reconciler.config import Platform
from reconciler.daemon.alerts import Alerter, AlertTarget, PubSubTarget, WebhookTarget
from reconciler.daemon.gitsource import GitSource, GitSourceError, split_credentials
from reconciler.daemon.health_loop import HealthMonitor
from reconciler.daemon.lease import Lease, LeaseStore, SoloLease
from reconciler.daemon.logs import Redactor, correlation_id, make_logger
from reconciler.daemon.metrics import Metrics
from reconciler.daemon.settings import Settings
from reconciler.engine import Engine, plan_options
from reconciler.incremental import ObservedCache, ScopedPlan, plan_change, recheck
from reconciler.load import DesiredState, InvalidDesiredState, load_repo
from reconciler.plan import Action, Change, Plan
from reconciler.resources import SOURCE_KEY, Kind, Resource, ResourceIndex

HISTORY_LIMIT = 20  # commits searched back for a valid revision when starting on an invalid head
MAX_RETRY_S = 600.0  # cap of the backoff between retries of a failed apply
PROBLEMS_SHOWN = 50

# Builds the providers for a platform (project, region, and settings such as the dataflow block).
ProvidersFactory = Callable[[Platform], Sequence[Provider]]


class Abandoned(ProviderError):
    """A change not started before shutdown: apply records it as failed, dependents skipped."""


class Daemon:
    def __init__(
        self,
        settings: Settings,
        *,
        providers_factory: ProvidersFactory | None = None,
        lease: Lease | SoloLease | None = None,
        alert_targets: Iterable[AlertTarget] | None = None,
        log_stream: IO[str] | None = None,
        alert_memory: LeaseStore | None = None,
        secrets_factory: Callable[[Platform], Any] | None = None,
        http_routes: Sequence[Any] = (),
    ) -> None:
        """``secrets_factory(platform)``: the `providers.base.SecretStore` a plan checks the
        connectors' secret references against; default Secret Manager (or the local secrets
        directory on the emulators) when the providers are the default ones, else none.
        ``http_routes``: more Starlette routes for the HTTP server (`reconciler.daemon.server`,
        "Adding routes"), e.g. a read-only status page."""
        self.settings = settings
        # Retries against deadlines, per-API budgets and circuits (providers/errors.py); an
        # apply's deadline is its Budget, started by each apply.
        provider_errors.configure(
            provider_errors.RetryPolicy(call_deadline=settings.call_deadline, apply_deadline=settings.apply_deadline),
            provider_errors.parse_rates(settings.api_rates))
        self._apply_budget = provider_errors.Budget(settings.apply_deadline)
        self._http_routes = tuple(http_routes)
        self.redactor = Redactor(settings.secrets())
        self.log = make_logger(log_stream, self.redactor)
        self.metrics = Metrics()
        self.git = GitSource(settings.repo, settings.branch, settings.cache_dir, token=settings.git_token,
                             ssh_key=settings.git_ssh_key, known_hosts=settings.git_known_hosts,
                             redactor=self.redactor)
        self.lease = lease if lease is not None else _default_lease(settings)
        targets = list(alert_targets) if alert_targets is not None else self._default_targets()
        memory = alert_memory if alert_memory is not None else _default_alert_memory(settings)
        self.alerts = Alerter(targets, self.log, lambda target, result: self.metrics.alerts.labels(target, result).inc(),
                              memory=memory)
        # Health beside sync (issue 11): checked on every drift pass (reconciler/daemon/health_loop.py).
        self.source_health = HealthMonitor(self.metrics, self.alerts, redact=self.redactor.value)
        self._health_cache: tuple[tuple[Any, Any], dict[str, Any] | None] | None = None  # see _health_document
        self._drift_origins: dict[str, Any] = {}  # address -> who set what it departs from (reconciler.blame)
        self._providers_factory = providers_factory or _build_providers
        self._secrets_factory = secrets_factory or (None if providers_factory else _build_secret_store)
        self._engines: dict[str, Engine] = {}  # by the platform settings they were built for
        # Incremental convergence (module docstring): live state as last read, and the revision last
        # planned with its compiled desired state (what the next commit is compared with).
        self.cache = ObservedCache()
        self._planned: tuple[DesiredState, ResourceIndex] | None = None
        self._suspended_of: tuple[DesiredState, set[str]] | None = None
        self._recheck_requested = threading.Event()

        self._stop = threading.Event()
        self._wake = threading.Event()  # the worker has something to look at
        self._sync_requested = threading.Event()
        self._sync_trigger = "webhook"
        self._threads: list[threading.Thread] = []
        self.server = None
        self.ready = False
        # Liveness: what the worker is doing, since when, and its last sign of progress.
        self._busy_since: float | None = None
        self._busy_step: str | None = None
        self._progress_at = time.monotonic()

        # Revision bookkeeping; the worker thread alone writes these.
        self._head: str | None = None  # branch head last fetched
        self._candidate: DesiredState | None = None  # newest valid revision, to sync
        # The last state loaded from the checkout: the next load reads again only the files that
        # the checkout changed since (`load_repo`'s ``previous``).
        self._loaded: DesiredState | None = None
        self._served: DesiredState | None = None  # last good revision: drift is measured against it
        self._retry_at: float | None = None  # when to re-run the sync of _candidate
        self._failures = 0
        self._waiting_for_lease = False
        self._fetch_failing = False

        self._status_lock = threading.Lock()
        self._status: dict[str, Any] = {
            "repo": self.git.display_url,
            "branch": settings.branch,
            "path": settings.path,
            "revision": None,
            "head": {"revision": None, "valid": None, "problems": [], "error": None},
            "last_sync": None,
            "last_in_sync_at": None,
            "pending": [],
            "blocked": [],
            "kept": [],
            "suspended": {"platform": False, "sources": []},
            "drift": {"checked_at": None, "resources": []},
            "last_repair": None,
        }

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Bind the HTTP server and start the threads; returns at once."""
        from reconciler.daemon.server import make_server
        from reconciler.ui import routes as status_page

        host, port = self.settings.host_port
        # The read-only status page (reconciler/ui) after the caller's routes, which may take its paths.
        self.server = make_server(self, host, port, (*self._http_routes, *status_page()))
        provider_errors.listeners.append(self.metrics.api_request)
        provider_errors.listeners.append(self._api_progress)
        provider_errors.circuit_listeners.append(self._circuit_changed)
        self.log.info("daemon.started", repo=self.git.display_url, listen=self.address,
                      settings=self.settings.public())
        if split_credentials(self.settings.repo)[0] != self.settings.repo:
            self.log.warning("daemon.credentials_in_url",
                             advice="set HEADWATER_GIT_TOKEN instead: a --repo flag shows in ps; the credentials "
                                    "were taken out of the URL, git never sees them")
        for name, target in (("http", self.server.serve_forever), ("lease", self._lease_loop),
                             ("worker", self._work)):
            thread = threading.Thread(target=target, name=f"headwater-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        if self.settings.asset_feed:  # issue 14: Cloud Asset Inventory feed -> invalidate (reconciler/daemon/asset_watch.py)
            from reconciler.daemon.asset_watch import for_daemon

            self.asset_watch = for_daemon(self)
            self.asset_watch.start()

    @property
    def address(self) -> str:
        host, port = self.server.server_address[:2] if self.server else self.settings.host_port
        return f"{host}:{port}"

    def request_stop(self, reason: str = "requested") -> None:
        if not self._stop.is_set():
            self.log.info("shutdown.requested", reason=reason)
        self._stop.set()
        self._wake.set()

    def serve(self) -> int:
        """Run until `request_stop` (the signal handlers call it); then shut down. Exit code 0."""
        self.start()
        while not self._stop.wait(0.5):
            pass
        self.shutdown()
        return 0

    def shutdown(self) -> None:
        """Stop the worker (within the grace period), release the lease, stop serving."""
        self.request_stop()
        started = time.monotonic()
        worker = next((t for t in self._threads if t.name == "headwater-worker"), None)
        if worker is not None:
            worker.join(self.settings.shutdown_grace)
            if worker.is_alive():
                # An API call outlived the grace period; the process exits anyway and the next
                # start converges (apply is idempotent).
                self.log.warning("shutdown.abandoned", waited_seconds=round(time.monotonic() - started, 2))
        lease_thread = next((t for t in self._threads if t.name == "headwater-lease"), None)
        if lease_thread is not None:
            lease_thread.join(2.0)
        try:
            released = self.lease.release()
        except Exception as exc:  # noqa: BLE001 - the lease then expires by itself
            self.log.warning("lease.release_failed", error=str(exc))
        else:
            if released:
                self.log.info("lease.released", identity=self.settings.identity)
        self.metrics.lock_held.set(0)
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
        for listener, registry in ((self.metrics.api_request, provider_errors.listeners),
                                   (self._api_progress, provider_errors.listeners),
                                   (self._circuit_changed, provider_errors.circuit_listeners)):
            if listener in registry:
                registry.remove(listener)
        self.log.info("shutdown.complete", seconds=round(time.monotonic() - started, 2))

    # ------------------------------------------------------------------ used by the HTTP server

    def health(self) -> dict[str, Any]:
        """The liveness verdict: "ok", "worker stopped", or "worker stalled" (busy in one step for
        longer than ``--stall-timeout`` with no API call answered, no change applied meanwhile)."""
        worker = next((t for t in self._threads if t.name == "headwater-worker"), None)
        if worker is None or not (worker.is_alive() or self._stop.is_set()):
            return {"status": "worker stopped"}
        busy_since, step = self._busy_since, self._busy_step
        if busy_since is not None and not self._stop.is_set():
            now = time.monotonic()
            quiet = now - max(busy_since, self._progress_at)
            if quiet > self.settings.stall_timeout:
                return {"status": "worker stalled", "step": step, "busy_seconds": round(now - busy_since, 1),
                        "seconds_without_progress": round(quiet, 1), "stall_timeout": self.settings.stall_timeout}
        return {"status": "ok"}

    def alive(self) -> bool:
        return self.health()["status"] == "ok"

    def _api_progress(self, _service: str, _method: str, _code: str) -> None:
        self._progress_at = time.monotonic()  # an API answered (or failed): the worker is not stuck

    def _circuit_changed(self, service: str, state: str) -> None:
        (self.log.warning if state == "open" else self.log.info)("api.circuit", service=service, state=state)

    def invalidate(self, addresses: Iterable[str]) -> int:
        """Resources changed on GCP behind headwater's back (``kind.name`` addresses, e.g. from a
        Cloud Asset Inventory feed): drop them from the observed-state cache
        (`reconciler.incremental.ObservedCache.invalidate`) and check them for drift as soon as the
        worker is free, reading only them. Safe from any thread. Returns how many were marked."""
        marked = self.cache.invalidate(addresses)
        if marked:
            self._recheck_requested.set()
            self._wake.set()
        return marked

    def request_sync(self, trigger: str) -> None:
        """Fetch and sync as soon as the worker is free (the push webhook calls this)."""
        self._sync_trigger = trigger
        self._sync_requested.set()
        self._wake.set()

    def status(self) -> dict[str, Any]:
        with self._status_lock:
            snapshot = _copy(self._status)
        snapshot["ready"] = self.ready
        snapshot["self_heal"] = self.settings.self_heal
        snapshot["lock"] = self.lease.snapshot()
        snapshot["alerts"] = [{"event": a.event, "summary": a.summary, "revision": a.revision,
                               "at": _iso(a.at)} for a in self.alerts.sent[-10:]]
        snapshot["settings"] = self.settings.public()
        redacted = self.redactor.value(snapshot)
        redacted["health"] = self._health_document()  # the health document (docs/daemon.md)
        return redacted

    def _health_document(self) -> dict[str, Any] | None:
        """The health document, redacted, computed once per health check (not per request: with a
        thousand sources it is the costly part of ``status()``, and the status page asks for it
        on every view). Shared between callers: read it, do not change it."""
        key = (self.source_health.last, self.source_health.last_error)
        cached = self._health_cache
        if cached is None or cached[0][0] is not key[0] or cached[0][1] != key[1]:
            cached = self._health_cache = (key, self.redactor.value(self.source_health.document()))
        return cached[1]

    # ------------------------------------------------------------------ threads

    def _work(self) -> None:
        next_fetch = time.monotonic()
        next_drift = time.monotonic() + self._jittered(self.settings.drift_interval)
        first = True
        while not self._stop.is_set():
            self._wake.clear()
            now = time.monotonic()
            if self._waiting_for_lease and self.lease.held():
                self._waiting_for_lease = False
                self._retry_at = now
            requested = self._sync_requested.is_set()
            fetch = requested or now >= next_fetch
            retry = self._retry_at is not None and now >= self._retry_at
            if fetch or retry:
                self._sync_requested.clear()
                trigger = "startup" if first else self._sync_trigger if requested else "poll" if fetch else "retry"
                self._guarded(self._sync_pass, fetch, trigger)
                if fetch:
                    next_fetch = time.monotonic() + self.settings.poll_interval
                first = False
            if not self._stop.is_set() and time.monotonic() >= next_drift:
                self._recheck_requested.clear()  # a full pass reads the invalidated addresses too
                self._guarded(self._drift_pass)
                next_drift = time.monotonic() + self._jittered(self.settings.drift_interval)
            elif not self._stop.is_set() and self._recheck_requested.is_set():
                self._recheck_requested.clear()
                self._guarded(self._drift_pass, False)
            deadline = min(next_fetch, next_drift, self._retry_at if self._retry_at is not None else next_fetch)
            self._wake.wait(max(0.0, deadline - time.monotonic()))

    def _guarded(self, step: Callable[..., None], *args: Any) -> None:
        """A bug in one pass is logged and counted; the loop goes on. The pass is what /healthz
        watches for progress."""
        self._busy_step, self._busy_since = step.__name__.strip("_"), time.monotonic()
        try:
            step(*args)
        except Exception as exc:  # noqa: BLE001
            self.log.exception("daemon.pass_crashed", step=step.__name__, error=f"{type(exc).__name__}: {exc}")
            self.metrics.reconcile.labels("error").inc()
        finally:
            self._busy_since = self._busy_step = None

    def _lease_loop(self) -> None:
        was_held = False
        while not self._stop.is_set():
            try:
                held, what = self.lease.tick()
            except Exception as exc:  # noqa: BLE001 - store unreachable: keep trying; held() times out
                held, what = self.lease.held(), "error"
                self.log.warning("lease.error", error=str(exc), held=held)
            self.metrics.lock_held.set(1 if held else 0)
            if held != was_held:
                snapshot = self.lease.snapshot()
                self.log.info("lease.acquired" if held else "lease.not_held", how=what,
                              holder=snapshot["holder"], object=snapshot["object"])
                if held:
                    self._wake.set()  # the worker may have work that was waiting for the lease
            was_held = held
            # After an error, retry sooner than a renewal would, so a short outage does not cost the lease.
            self._stop.wait(self.lease.renew_every if what != "error" else max(1.0, self.lease.renew_every / 3))

    def _jittered(self, interval: float) -> float:
        jitter = max(0.0, min(self.settings.drift_jitter, 0.9))
        return interval * (1 + random.uniform(-jitter, jitter))

    # ------------------------------------------------------------------ sync

    def _sync_pass(self, fetch: bool, trigger: str) -> None:
        log = self.log.bind(correlation_id=correlation_id(), loop="sync", trigger=trigger)
        started = time.monotonic()
        moved = False
        if fetch:
            try:
                head = self.git.fetch()
            except GitSourceError as exc:
                log.error("sync.fetch_failed", error=str(exc))
                self.metrics.reconcile.labels("error").inc()
                self._set_status(head=dict(self._status["head"], error=str(exc)))
                self.alerts.sync_failed(self._head, "fetch_failed", str(exc))
                self._fetch_failing = True
                return
            if self._fetch_failing:
                self._fetch_failing = False
                self._set_status(head=dict(self._status["head"], error=None))
                if self._candidate is not None and self._candidate.revision == head:
                    self.alerts.sync_ok(head)
            moved = head != self._head
            if moved:
                log.info("sync.new_revision", revision=head, previous=self._head)
                self._head = head
                state = self._load(head, log)
                if state is None and self._served is None and self._candidate is None:
                    state = self._last_good_before(head, log)
                if state is None:
                    return  # keep serving (and retrying) what we had
                self._candidate = state
                self._failures = 0
        if not moved and (self._retry_at is None or time.monotonic() < self._retry_at):
            return  # nothing new since the last sync
        if self._candidate is not None:
            self._reconcile(self._candidate, log.bind(revision=self._candidate.revision), started)

    def _load(self, sha: str, log: Any) -> DesiredState | None:
        """Check ``sha`` out and validate it; None (reported) when it is invalid. Files that did
        not change since the last load (git says which) are not read again (`load_repo`'s
        ``previous`` and ``changed``)."""
        previous = None
        try:
            root = self.git.checkout(sha)
            # Every file read must resolve inside the checkout (not just the --path directory).
            previous = self._loaded
            # What git says changed since the last load (exact, unlike file times); None: stamps.
            changed = self.git.changed_files(previous.revision, sha) if previous and previous.revision else None
            state = load_repo(root / self.settings.path, within=root, previous=previous, changed=changed)
            self._loaded = state
        except GitSourceError as exc:
            problems = [str(exc)]
        except InvalidDesiredState as exc:
            problems = [str(p) for p in exc.problems]
        except Exception as exc:  # noqa: BLE001 - a loader bug must not crash the loop
            problems = [f"could not load the desired state: {type(exc).__name__}: {exc}"]
        else:
            kept = {id(s) for s in previous.sources} if previous is not None else set()
            log.info("sync.loaded", revision=sha, sources=len(state.sources),
                     reused_sources=sum(1 for s in state.sources if id(s) in kept))
            self.metrics.head_valid.set(1)
            self._set_status(head={"revision": sha, "valid": True, "problems": [], "error": None})
            return state
        log.error("sync.invalid_revision", revision=sha, problem_count=len(problems),
                  problems=problems[:PROBLEMS_SHOWN], served=self._served_revision)
        self.metrics.reconcile.labels("invalid").inc()
        self.metrics.head_valid.set(0)
        self._set_status(head={"revision": sha, "valid": False, "problems": problems[:PROBLEMS_SHOWN],
                               "error": f"{len(problems)} problems; not applied"})
        self._record_sync(sha, "invalid", log, error=f"{len(problems)} problems: {problems[0]}")
        self.alerts.sync_failed(sha, "invalid", f"{len(problems)} problems in the desired state:\n"
                                + "\n".join(problems[:10]))
        return None

    def _last_good_before(self, head: str, log: Any) -> DesiredState | None:
        """Startup on an invalid head: the newest valid first-parent ancestor, if any."""
        try:
            ancestors = self.git.first_parents(head, HISTORY_LIMIT)[1:]
        except GitSourceError as exc:
            log.error("sync.history_failed", error=str(exc))
            return None
        for sha in ancestors:
            try:
                root = self.git.checkout(sha)
                state = load_repo(root / self.settings.path, within=root, previous=self._loaded)
                self._loaded = state
            except Exception:  # noqa: BLE001 - invalid (or unreadable): look further back
                continue
            log.info("sync.serving_last_good", revision=sha, head=head)
            return state
        log.error("sync.no_valid_revision", head=head, searched=len(ancestors) + 1)
        return None

    def _reconcile(self, state: DesiredState, log: Any, started: float) -> None:
        """Plan ``state`` and, when allowed, apply it. Records status, metrics and alerts."""
        revision = state.revision
        self._retry_at = None
        try:
            engine = self._engine(state)
            scoped = self._plan(engine, state, log, full=False)  # the platform's policy; never allow_destroy
            plan = scoped.plan
        except Exception as exc:  # noqa: BLE001 - API down, permission denied...: retry later
            self._failed(revision, "error", f"observe/plan failed: {_describe(exc)}", log, started)
            return
        self._set_ready()
        if plan.refused:
            log.error("sync.refused", reason=plan.refused, served=self._served_revision)
            self._record_sync(revision, "refused", log, error=plan.refused, started=started)
            self.alerts.sync_failed(revision, "refused", plan.refused)
            return  # branch must move; the served revision stays

        self._serve(state, log)
        self._observe_result(plan, state)
        suspended = self._suspended(state)
        if state.platform.suspend:
            log.info("sync.suspended", scope="platform", pending=len(plan.actionable))
            self._record_sync(revision, "suspended", log, started=started, plan=plan)
            return
        if not self.lease.held():
            log.info("sync.observe_only", reason="another daemon holds the lease",
                     holder=self.lease.snapshot()["holder"], pending=len(plan.actionable))
            self._waiting_for_lease = True
            self._record_sync(revision, "observe_only", log, started=started, plan=plan)
            return

        work = without_sources(plan, suspended)
        if suspended:
            log.info("sync.sources_suspended", sources=sorted(suspended),
                     withheld=len(plan.actionable) - len(work.actionable))
        for change in plan.blocked:
            log.warning("sync.blocked", address=change.address, action=str(change.action), reason=change.blocked)
        result = ApplyResult()
        planned = plan
        if work.actionable:
            log.info("sync.apply_started", changes=len(work.actionable))
            result = self._apply(engine, work, log)
            self.source_health.record_apply(work, result, revision)
            try:
                after = self._recheck(engine, state, work, scoped.index)
            except Exception as exc:  # noqa: BLE001 - the apply's own result stands
                log.warning("sync.reobserve_failed", error=_describe(exc))
            else:
                plan = after
                self._observe_result(after, state)
        if not result.ok:
            outcome = "interrupted" if self._stop.is_set() else "failed"
            self._failed(revision, outcome, result.summary(), log, started, plan=planned, after=plan)
            return
        self._failures = 0
        if self.source_health.last is None:  # the first health check need not wait for a drift pass
            self.source_health.check(state, engine, plan, log)
        outcome = "blocked" if plan.blocked else "converged"
        self._record_sync(revision, outcome, log, started=started, plan=planned, after=plan,
                          summary=result.summary() if work.actionable else "nothing to apply")
        if plan.blocked:
            self.alerts.sync_failed(revision, "blocked", "; ".join(f"{c.address}: {c.blocked}" for c in plan.blocked))
        else:
            self._in_sync_now()
            if revision == self._head:  # serving an older revision while the head is broken is no recovery
                self.alerts.sync_ok(revision)

    def _failed(self, revision: str | None, outcome: str, error: str, log: Any, started: float,
                plan: Plan | None = None, after: Plan | None = None) -> None:
        self._failures += 1
        delay = min(self.settings.poll_interval * 2 ** (self._failures - 1), MAX_RETRY_S)
        self._retry_at = None if self._stop.is_set() else time.monotonic() + delay
        self._record_sync(revision, outcome, log, error=error, started=started, plan=plan, after=after,
                          retry_in_seconds=None if self._stop.is_set() else round(delay, 1))
        if outcome != "interrupted":
            self.alerts.sync_failed(revision, outcome, error)

    def _apply(self, engine: Engine, plan: Plan, log: Any) -> ApplyResult:
        def on_outcome(outcome: Outcome) -> None:
            self._progress_at = time.monotonic()
            self.metrics.apply_operations.labels(str(outcome.kind), str(outcome.action), outcome.status).inc()
            event = log.info if outcome.status == OK else log.error
            event("apply.change", address=outcome.address, kind=str(outcome.kind), action=str(outcome.action),
                  result=outcome.status, duration_seconds=round(outcome.seconds, 3), error=outcome.error)

        self._apply_budget.start()  # every call of this apply stops retrying at --apply-deadline
        try:
            return engine.apply(plan, on_outcome=on_outcome, max_workers=self.settings.max_workers)
        finally:
            self._apply_budget.stop()

    def _record_sync(self, revision: str | None, result: str, log: Any, *, error: str | None = None,
                     started: float | None = None, plan: Plan | None = None, after: Plan | None = None,
                     summary: str | None = None, retry_in_seconds: float | None = None) -> None:
        """``plan``: what was decided for the revision; ``after``: the re-observation after applying."""
        duration = time.monotonic() - started if started is not None else None
        if result != "invalid":  # invalid is counted where it is detected
            self.metrics.reconcile.labels(result).inc()
        if duration is not None:
            self.metrics.reconcile_duration.observe(duration)
        record = {
            "revision": revision, "result": result, "at": _iso(time.time()),
            "duration_seconds": round(duration, 3) if duration is not None else None,
            "correlation_id": structlog.get_context(log).get("correlation_id"),
            "plan": plan.summary() if plan is not None else None,
            "remaining_changes": len((after or plan).actionable) if plan is not None else None,
            "apply": summary, "error": error, "retry_in_seconds": retry_in_seconds,
        }
        self._set_status(last_sync=record)
        (log.info if error is None else log.error)(
            "sync.finished", result=result, duration_seconds=record["duration_seconds"], apply=summary,
            error=error, retry_in_seconds=retry_in_seconds)

    def _serve(self, state: DesiredState, log: Any) -> None:
        if self._served is None or self._served.revision != state.revision:
            log.info("sync.serving", revision=state.revision, previous=self._served_revision)
        self._served = state
        self.metrics.set_revision(state.revision)
        suspended = self._suspended(state)
        self._set_status(revision=state.revision,
                         suspended={"platform": state.platform.suspend, "sources": sorted(suspended)})

    def _suspended(self, state: DesiredState) -> set[str]:
        """`suspended_sources(state)`, worked out once per state (it looks at every source; a sync
        asks several times)."""
        cached = self._suspended_of
        if cached is None or cached[0] is not state:
            cached = self._suspended_of = (state, suspended_sources(state))
        return cached[1]

    @property
    def _served_revision(self) -> str | None:
        return self._served.revision if self._served else None

    # ------------------------------------------------------------------ drift

    def _drift_pass(self, full: bool = True) -> None:
        """``full``: observe everything (the drift interval), refreshing the cache; otherwise re-read
        only the invalidated addresses (`invalidate`)."""
        state = self._served
        if state is None:
            return  # nothing good to compare with yet
        log = self.log.bind(correlation_id=correlation_id(), loop="drift", revision=state.revision)
        try:
            engine = self._engine(state)
            scoped = self._plan(engine, state, log, full=full)
            plan = scoped.plan
        except Exception as exc:  # noqa: BLE001
            log.error("drift.observe_failed", error=_describe(exc))
            self.metrics.drift_checks.labels("error").inc()
            return
        self._set_ready()
        drifted = self._observe_result(plan, state)
        self.alerts.drift(drifted, state.revision, self._drift_origins)
        self.source_health.check(state, engine, plan, log)  # health beside sync, on the drift interval
        if not drifted:
            log.info("drift.checked", drifted=0)
            self.metrics.drift_checks.labels("in_sync").inc()
            if not plan.blocked:
                self._in_sync_now()
            return
        log.warning("drift.detected", drifted=len(drifted), resources=sorted(drifted))
        if not self.settings.self_heal:
            log.info("drift.alert_only", reason="self-heal is off")
            self.metrics.drift_checks.labels("drifted").inc()
            return
        repairs = heal_plan(plan, self._suspended(state))
        reason = None
        if state.platform.suspend:
            reason = "platform is suspended"
        elif not self.lease.held():
            reason = "another daemon holds the lease"
        elif not repairs.actionable:
            reason = "nothing repairable by update or create (replacements, deletes and blocked changes are not)"
        if reason:
            log.info("drift.heal_skipped", reason=reason)
            self.metrics.drift_checks.labels("drifted").inc()
            return
        log.info("drift.heal_started", changes=len(repairs.actionable),
                 resources=[c.address for c in repairs.actionable])
        result = self._apply(engine, repairs, log)
        try:
            after = self._recheck(engine, state, repairs, scoped.index)
        except Exception as exc:  # noqa: BLE001
            log.warning("drift.reobserve_failed", error=_describe(exc))
        else:
            remaining = self._observe_result(after, state)
            self.alerts.drift(remaining, state.revision, self._drift_origins)
            if not remaining and not after.blocked:
                self._in_sync_now()
        log.info("drift.heal_finished", result="ok" if result.ok else "failed", apply=result.summary())
        self.metrics.drift_checks.labels("healed" if result.ok else "error").inc()
        self._set_status(last_repair={
            "at": _iso(time.time()), "revision": state.revision, "result": "ok" if result.ok else "failed",
            "changes": [{"address": c.address, "action": str(c.action),
                         "fields": [{"path": d.path, "live": d.before, "desired": d.after} for d in c.diff]}
                        for c in repairs.actionable],
            "summary": result.summary(),
        })

    # ------------------------------------------------------------------ observations → status, metrics

    def _observe_result(self, plan: Plan, state: DesiredState) -> dict[str, str]:
        """Record one observation; returns the drifted resources (address → one-line description).
        Looks at the plan's changes other than no-ops (`Plan.non_noop`) and its counts of declared
        resources by kind: not at the 110,000 no-ops of a 10,000-source platform in sync."""
        suspended = self._suspended(state)
        by_kind: dict[tuple[Kind, str], int] = {}
        per_kind: dict[str, int] = {}
        drift_entries, drifted = [], {}
        origins = self._origins(plan, state)
        for change in plan.non_noop:
            if change.desired is None:
                continue  # not declared: an orphan is not drift (see "kept" / pending deletes)
            state_name = resource_state(change)
            key = (change.kind, state_name)
            by_kind[key] = by_kind.get(key, 0) + 1
            if state_name in ("drifted", "missing"):
                per_kind[str(change.kind)] = per_kind.get(str(change.kind), 0) + 1
                mine = origins.get(change.address, {})
                fields = [{"path": d.path, "live": d.before, "desired": d.after,
                           "origin": mine[d.path].to_dict() if d.path in mine else None} for d in change.diff]
                source = change.desired.labels.get(SOURCE_KEY)
                drift_entries.append({"address": change.address, "kind": str(change.kind), "state": state_name,
                                      "source": source, "suspended": source in suspended,
                                      "action": str(change.action), "fields": fields,
                                      "origin": mine[""].to_dict() if "" in mine else None})
                drifted[change.address] = (
                    ("missing" + (f" (declared {mine[''].describe().removeprefix('set ')})" if "" in mine else ""))
                    if state_name == "missing"
                    else ", ".join(f"{d.path}: {_short(d.before)} → {_short(d.after)}"
                                   + (f" (desired value {mine[d.path].describe()})" if d.path in mine else "")
                                   for d in change.diff))
        for kind, declared in plan.declared_counts.items():  # the rest of each kind is in sync
            in_sync = declared - sum(n for (k, _state), n in by_kind.items() if k == kind)
            if in_sync:
                by_kind[(kind, "in_sync")] = in_sync
        counts = {(str(kind), state_name): n for (kind, state_name), n in by_kind.items()}
        self._drift_origins = {address: {path or "declared": o.to_dict() for path, o in found.items()}
                               for address, found in origins.items()}
        self.metrics.set_resources(counts, per_kind)
        self._set_status(
            drift={"checked_at": _iso(time.time()), "revision": state.revision, "resources": drift_entries},
            pending=[_change_summary(c, suspended) for c in plan.actionable],
            blocked=[{"address": c.address, "action": str(c.action), "reason": c.blocked} for c in plan.blocked],
            kept=[c.address for c in plan.kept],
            resources={f"{k}/{s}": n for (k, s), n in sorted(counts.items())},
        )
        return drifted

    def _origins(self, plan: Plan, state: DesiredState) -> dict[str, Any]:
        """Who set the desired values the drifted resources depart from (git blame at the served
        revision, reconciler/blame.py); nothing when git cannot tell."""
        from reconciler.blame import drift_origins

        try:
            return drift_origins(state, plan, state.revision)
        except Exception as exc:  # noqa: BLE001 - drift is reported without its origin, never not at all
            self.log.warning("drift.blame_failed", error=f"{type(exc).__name__}: {exc}"[:300])
            return {}

    def _in_sync_now(self) -> None:
        self.metrics.last_sync.set(time.time())
        self._set_status(last_in_sync_at=_iso(time.time()))

    def _set_ready(self) -> None:
        if not self.ready:
            self.ready = True
            self.metrics.ready.set(1)
            self.log.info("daemon.ready")

    def _set_status(self, **values: Any) -> None:
        with self._status_lock:
            self._status.update(values)

    # ------------------------------------------------------------------ wiring

    def _engine(self, state: DesiredState) -> Engine:
        # Providers depend on the platform settings (project, region, dataflow...): rebuilt when
        # a revision changes them, reused otherwise (clients keep their connections).
        key = state.platform.model_dump_json()
        if key not in self._engines:
            self._engines.clear()
            self.cache.clear()  # other providers (project, region...): nothing cached holds
            self._planned = None
            providers = self._providers_factory(state.platform)
            secrets = self._secrets_factory(state.platform) if self._secrets_factory else None
            # With the real providers (as for secrets), a landing bucket or joined table neither declared
            # nor existing is a plan error (reconciler/references.py): never a job failing on every run.
            self._engines[key] = Engine([_Interruptible(provider_errors.bounded(p, self._apply_budget), self._stop)
                                         for p in providers], secrets=secrets,
                                        check_references=self._providers_factory is _build_providers)
        return self._engines[key]

    def _plan(self, engine: Engine, state: DesiredState, log: Any, *, full: bool) -> ScopedPlan:
        """Plan ``state`` (the platform's policy): incremental against the cache when it can be
        (`reconciler.incremental.plan_change`), else a full observe that refreshes the cache.
        Counts the plan's mode and its provider calls."""
        previous = self._planned
        scoped = plan_change(engine, state, plan_options(state), cache=self.cache,
                             previous=previous[0] if previous else None,
                             previous_desired=previous[1] if previous else None,
                             full=full or not self.settings.incremental, max_age=self.settings.cache_max_age_s)
        self._planned = (state, scoped.index)
        self._count_plan(scoped)
        log.info("plan.observed", mode=scoped.mode, reason=scoped.reason or None, changed=len(scoped.changed),
                 read=len(scoped.read), observed_kinds=len(scoped.observed))
        return scoped

    def _recheck(self, engine: Engine, state: DesiredState, applied: Plan, desired: ResourceIndex) -> Plan:
        """The plan after an apply: only what was applied is read again (`reconciler.incremental.recheck`);
        with ``--no-incremental``, a full plan."""
        if not self.settings.incremental:
            return self._plan(engine, state, self.log, full=True).plan
        scoped = recheck(engine, state, applied, cache=self.cache, desired=desired)
        self._count_plan(scoped, "recheck")
        return scoped.plan

    def _count_plan(self, scoped: ScopedPlan, mode: str | None = None) -> None:
        self.metrics.plans.labels(mode or scoped.mode).inc()
        for call, count in scoped.calls.items():
            if count:
                self.metrics.observe_calls.labels(call).inc(count)

    def _default_targets(self) -> list[AlertTarget]:
        targets: list[AlertTarget] = []
        if self.settings.notify_webhook:
            targets.append(WebhookTarget(self.settings.notify_webhook))
        if self.settings.notify_topic:
            targets.append(PubSubTarget(self._publish_alert))
        return targets

    def _publish_alert(self, data: bytes, attributes: Mapping[str, str]) -> None:
        from providers.pubsub_notify import TopicPublisher

        project = self._served.platform.project if self._served else None
        publisher = getattr(self, "_publisher", None)
        if publisher is None:
            publisher = self._publisher = TopicPublisher(self.settings.notify_topic, project)
        publisher(data, attributes)


# ---------------------------------------------------------------------- plan filters (pure)


def suspended_sources(state: DesiredState) -> set[str]:
    return {s.source_id for s in state.sources if s.connector.suspend}


def _source_of(change: Change) -> str | None:
    resource: Resource | None = change.desired or change.live
    return resource.labels.get(SOURCE_KEY) if resource else None


def without_sources(plan: Plan, sources: set[str]) -> Plan:
    """The plan minus the changes of suspended sources (observe-only for them)."""
    if not sources:
        return plan
    return dataclasses.replace(plan, changes=tuple(c for c in plan.changes if _source_of(c) not in sources))


# Kinds self-heal leaves alone. Launching or relaunching a Dataflow job is a deployment, not a
# metadata repair: jobs are launched and updated by syncs (a new commit) only; their drift is
# still reported. (A batch job is its Cloud Scheduler job on Dataflow, so it no longer shows as
# missing once a run has ended.)
NOT_HEALED = frozenset({Kind.DATAFLOW_JOB})


def heal_plan(plan: Plan, suspended: set[str]) -> Plan:
    """Self-heal's share of a drift plan: updates of declared resources, and re-creation of
    declared resources that disappeared. Never deletes (pruning is a sync's job, on a commit),
    never replacements (a delete first), never blocked changes, nothing of a suspended source,
    no `NOT_HEALED` kind. The core's refusal, if any, is kept, so a refused plan repairs nothing."""
    keep = tuple(c for c in plan.changes
                 if c.desired is not None and c.action in (Action.UPDATE, Action.CREATE)
                 and c.kind not in NOT_HEALED and _source_of(c) not in suspended)
    return dataclasses.replace(plan, changes=keep)


def resource_state(change: Change) -> str:
    """in_sync, drifted, missing or blocked: a declared resource's state in a plan."""
    if change.blocked:
        return "blocked"
    if change.action == Action.NOOP:
        return "in_sync"
    if change.action == Action.CREATE:
        return "missing"
    return "drifted"


def _change_summary(change: Change, suspended: set[str]) -> dict[str, Any]:
    return {"address": change.address, "action": str(change.action), "reason": change.reason,
            "suspended": _source_of(change) in suspended,
            "fields": [{"path": d.path, "live": d.before, "desired": d.after} for d in change.diff]}


# ---------------------------------------------------------------------- helpers


class _Interruptible:
    """A provider whose changes refuse to start once shutdown began (observe always works)."""

    def __init__(self, inner: Provider, stop: threading.Event) -> None:
        self._inner = inner
        self._stop = stop
        self.kinds: tuple[Kind, ...] = inner.kinds
        self.immutable_fields = inner.immutable_fields

    def observe(self, kind: Kind) -> list[Resource]:
        return self._inner.observe(kind)

    def observe_parts(self, kind: Kind) -> list[Callable[[], list[Resource]]]:
        # reconciler/engine.py: a kind's observe split for concurrency, when the provider splits it.
        parts = getattr(self._inner, "observe_parts", None)
        return list(parts(kind)) if parts is not None else [lambda: self._inner.observe(kind)]

    def create(self, resource: Resource) -> None:
        self._check(resource)
        self._inner.create(resource)

    def update(self, resource: Resource, fields: Sequence[str]) -> None:
        self._check(resource)
        self._inner.update(resource, fields)

    def delete(self, resource: Resource) -> None:
        self._check(resource)
        self._inner.delete(resource)

    # Reads, like observe, always work: the optional abilities of providers.base, passed through.
    def read(self, kind: Kind, names: Collection[str]) -> list[Resource]:
        return read_with(self._inner, kind, names)

    def would_lose(self, resources: Sequence[Resource]) -> Mapping[str, str]:
        return losses_with(self._inner, resources)

    def write_freshness(self, platform: str, ages: Mapping[str, float]) -> None:
        # Optional ability of the Cloud Monitoring provider: the metric its alert policies read.
        writer = getattr(self._inner, "write_freshness", None)
        if writer is not None:
            writer(platform, ages)

    def health(self, resources: Sequence[Resource]) -> Mapping[str, Any]:
        return health_with(self._inner, resources)

    def _check(self, resource: Resource) -> None:
        if self._stop.is_set():
            raise Abandoned(f"{resource.address}: not started, shutting down")


def _build_providers(platform: Platform) -> Sequence[Provider]:
    from providers import build_providers

    return build_providers(platform.project, platform.region, platform=platform)


def _build_secret_store(platform: Platform) -> Any:
    from providers import build_secret_store

    return build_secret_store(platform.project)


def _default_lease(settings: Settings) -> Lease | SoloLease:
    if not settings.lock_bucket:
        return SoloLease(settings.identity)
    from providers.storage_lock import GcsLeaseStore

    return Lease(GcsLeaseStore(settings.lock_bucket, settings.lock_object), settings.identity,
                 settings.lease_seconds)


def _default_alert_memory(settings: Settings) -> LeaseStore | None:
    """What was alerted, shared by the platform's daemons: next to the lease (alerts.py)."""
    if not settings.lock_bucket:
        return None
    from providers.storage_lock import GcsLeaseStore

    return GcsLeaseStore(settings.lock_bucket, settings.alerts_object)


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


def _describe(exc: BaseException) -> str:
    """Provider errors carry a readable message; anything else also needs its type (a KeyError's
    text alone is just the key)."""
    return str(exc) if isinstance(exc, ProviderError) else f"{type(exc).__name__}: {exc}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


