"""Settings of `headwater run`: command-line flags, each with an environment twin (12-factor).

Every flag ``--some-flag`` can also be set as ``HEADWATER_SOME_FLAG``; a flag given on the
command line wins over its environment twin. Booleans accept true/false, 1/0, yes/no, on/off.

Secrets are environment-only, never flags (flags show up in ``ps`` and in Cloud Run's
revision spec): ``HEADWATER_WEBHOOK_SECRET`` (GitHub webhook HMAC secret),
``HEADWATER_GIT_TOKEN`` (HTTPS token) or ``HEADWATER_GIT_SSH_KEY`` (path of a private key, with
``HEADWATER_GIT_KNOWN_HOSTS`` to pin host keys). ``--notify-webhook`` is a credential too
(Slack webhook URLs embed a token): set it from a secret, it is never logged.
"""

from __future__ import annotations

import argparse
import os
import socket
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

ENV_PREFIX = "HEADWATER_"
TRUE, FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


@dataclass(frozen=True)
class Settings:
    repo: str
    branch: str = "main"
    path: str = "."
    poll_interval: float = 30.0
    drift_interval: float = 300.0
    drift_jitter: float = 0.1
    self_heal: bool = False
    listen: str = "0.0.0.0:8080"
    lock_bucket: str | None = None
    lock_object: str = "headwater/applier.lease"
    lease_seconds: float = 30.0
    notify_webhook: str | None = field(default=None, repr=False)
    notify_topic: str | None = None
    cache_dir: Path = field(default_factory=lambda: Path(tempfile.gettempdir()) / "headwater-cache")
    identity: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}")
    shutdown_grace: float = 8.0
    max_workers: int = 8
    # Retries (providers/errors.py): a call's and an apply's deadlines, per-API request budgets.
    call_deadline: float = 120.0
    apply_deadline: float = 1800.0
    api_rates: str = ""
    # Liveness: /healthz fails when the worker has been busy this long without progress.
    stall_timeout: float = 600.0
    # Incremental convergence (reconciler/incremental.py): a sync re-reads only what its commit
    # touches when the observed-state cache is younger than cache_max_age (None: 2 drift intervals).
    incremental: bool = True
    cache_max_age: float | None = None
    # Watch GCP (issue 14, reconciler/daemon/asset_watch.py): a Cloud Asset Inventory feed invalidates changed resources.
    asset_feed: bool = False
    # Environment only (see the module docstring); repr=False keeps them out of any dump.
    webhook_secret: str | None = field(default=None, repr=False)
    git_token: str | None = field(default=None, repr=False)
    git_ssh_key: str | None = field(default=None, repr=False)
    git_known_hosts: str | None = None

    @property
    def alerts_object(self) -> str:
        """The object remembering what was alerted (reconciler.daemon.alerts), beside the lease."""
        return f"{self.lock_object}.alerts.json"

    @property
    def cache_max_age_s(self) -> float:
        """How old the observed-state cache may be for an incremental plan (default: two drift
        intervals, so one missed drift pass does not force full plans)."""
        return self.cache_max_age if self.cache_max_age is not None else 2 * self.drift_interval

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host or "0.0.0.0", int(port)

    def secrets(self) -> list[str]:
        """Everything the logs, status and errors must never show (a token in the --repo URL too)."""
        from reconciler.daemon.gitsource import split_credentials

        in_url = split_credentials(self.repo)[2]
        return [s for s in (self.webhook_secret, self.git_token, self.notify_webhook, in_url) if s]

    def public(self) -> dict[str, object]:
        """The settings for /status and the startup log: no secrets, only whether they are set."""
        return {
            "branch": self.branch, "path": self.path, "poll_interval": self.poll_interval,
            "drift_interval": self.drift_interval, "self_heal": self.self_heal, "listen": self.listen,
            "lock": f"gs://{self.lock_bucket}/{self.lock_object}" if self.lock_bucket else None,
            "lease_seconds": self.lease_seconds, "notify_topic": self.notify_topic,
            "notify_webhook": bool(self.notify_webhook), "webhook_secret": bool(self.webhook_secret),
            "git_auth": "token" if self.git_token else ("ssh-key" if self.git_ssh_key else None),
            "identity": self.identity, "call_deadline": self.call_deadline, "apply_deadline": self.apply_deadline,
            "api_rates": self.api_rates or None, "stall_timeout": self.stall_timeout,
            "incremental": self.incremental, "cache_max_age": self.cache_max_age_s, "asset_feed": self.asset_feed,
        }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("--repo", help="URL or path of the desired-state git repository (required)")
    a("--branch", default="main", help="branch to track (default main)")
    a("--path", default=".", help="directory of the desired state inside the repository (default the root)")
    a("--poll-interval", type=float, default=30.0, help="seconds between fetches (default 30)")
    a("--drift-interval", type=float, default=300.0, help="seconds between drift checks (default 300)")
    a("--drift-jitter", type=float, default=0.1, help="± fraction of randomness on the drift interval (default 0.1)")
    a("--self-heal", action=argparse.BooleanOptionalAction, default=False,
      help="repair drift (updates and re-creates only, never deletes); default: alert only")
    a("--listen", default=None, help="host:port of the HTTP server (default 0.0.0.0:$PORT or 0.0.0.0:8080)")
    a("--lock-bucket", help="Cloud Storage bucket holding the applier lease (default: no lock, single instance)")
    a("--lock-object", default="headwater/applier.lease", help="object name of the lease in the lock bucket")
    a("--lease-seconds", type=float, default=30.0, help="lease duration; renewed every third of it (default 30)")
    a("--notify-webhook", help="webhook URL for alerts (Slack-compatible JSON); a credential, never logged")
    a("--notify-topic", help="Pub/Sub topic for alerts: projects/<p>/topics/<t>, or a topic id in the platform project")
    a("--cache-dir", type=Path, default=None, help="where the repository is cloned (default $TMPDIR/headwater-cache)")
    a("--identity", help="this daemon's name in the lease (default host-pid-random)")
    a("--shutdown-grace", type=float, default=8.0,
      help="seconds to let an apply in flight finish after SIGTERM (Cloud Run allows 10)")
    a("--max-workers", type=int, default=8, help="parallel API calls per apply stage (default 8)")
    a("--call-deadline", type=float, default=120.0,
      help="seconds one API call may spend retrying 429/5xx answers (default 120)")
    a("--apply-deadline", type=float, default=1800.0,
      help="seconds one apply may take; every call in it stops retrying then (default 1800)")
    a("--api-rates", default="",
      help="request budgets per API in this process, e.g. 'pubsub=100/second,run=60/minute' "
           "(defaults in providers/errors.py; with N daemons sharing a project, give each 1/N)")
    a("--stall-timeout", type=float, default=600.0,
      help="/healthz fails when the worker has been busy this long without progress (default 600)")
    a("--incremental", action=argparse.BooleanOptionalAction, default=True,
      help="plan a commit by re-reading only what it touches, against the cache the drift passes "
           "refresh (default on; --no-incremental observes everything on every sync)")
    a("--cache-max-age", type=float, default=None,
      help="seconds the observed-state cache may age before a sync observes in full (default 2 drift intervals)")
    a("--asset-feed", action=argparse.BooleanOptionalAction, default=False,
      help="watch GCP: a Cloud Asset Inventory feed to Pub/Sub marks changed resources for a drift check at once "
           "(default off; GCP only, docs/daemon.md)")


def apply_env_defaults(parser: argparse.ArgumentParser, environ: Mapping[str, str] = os.environ) -> None:
    """Make each flag default to its ``HEADWATER_<FLAG>`` environment twin when that is set.

    Runs while the whole CLI's parser is built, so a malformed value must not break other
    commands: it is kept in ``env_errors`` and reported by `from_args` when ``run`` starts.
    """
    defaults: dict[str, object] = {}
    errors: list[str] = []
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        name = ENV_PREFIX + action.dest.upper()
        if name not in environ:
            continue
        raw = environ[name]
        try:
            if isinstance(action, argparse.BooleanOptionalAction):
                defaults[action.dest] = _boolean(raw)
            else:
                defaults[action.dest] = action.type(raw) if action.type is not None else raw
        except ValueError:
            errors.append(f"{name}={raw!r} is not a valid {getattr(action.type, '__name__', 'boolean')}")
    parser.set_defaults(env_errors=errors, **defaults)


def from_args(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> Settings:
    """Settings from parsed flags (with their environment twins) and the environment-only secrets."""
    if getattr(args, "env_errors", None):
        raise ValueError("; ".join(args.env_errors))
    if not args.repo:
        raise ValueError("--repo (or HEADWATER_REPO) is required: the URL or path of the desired-state repository")
    from reconciler.daemon.gitsource import insecure_remote, split_credentials

    bare, _user, url_secret = split_credentials(args.repo)
    if (environ.get("HEADWATER_GIT_TOKEN") or url_secret) and insecure_remote(bare):
        raise ValueError(f"refusing to send git credentials to {bare} over plain http:// (only loopback hosts may "
                         "use http://); use an https:// URL")
    listen = args.listen or f"0.0.0.0:{environ.get('PORT', '8080')}"
    extra = {}
    if args.cache_dir is not None:
        extra["cache_dir"] = args.cache_dir
    if args.identity:
        extra["identity"] = args.identity
    return Settings(
        repo=args.repo, branch=args.branch, path=args.path, poll_interval=args.poll_interval,
        drift_interval=args.drift_interval, drift_jitter=args.drift_jitter, self_heal=args.self_heal,
        listen=listen, lock_bucket=args.lock_bucket or None, lock_object=args.lock_object,
        lease_seconds=args.lease_seconds, notify_webhook=args.notify_webhook or None,
        notify_topic=args.notify_topic or None, shutdown_grace=args.shutdown_grace,
        max_workers=args.max_workers, call_deadline=_positive("--call-deadline", args.call_deadline),
        apply_deadline=_positive("--apply-deadline", args.apply_deadline), api_rates=_rates(args.api_rates),
        stall_timeout=_positive("--stall-timeout", args.stall_timeout),
        incremental=getattr(args, "incremental", True), asset_feed=getattr(args, "asset_feed", False),
        cache_max_age=(None if getattr(args, "cache_max_age", None) is None
                       else _positive("--cache-max-age", args.cache_max_age)),
        webhook_secret=environ.get("HEADWATER_WEBHOOK_SECRET") or None,
        git_token=environ.get("HEADWATER_GIT_TOKEN") or None,
        git_ssh_key=environ.get("HEADWATER_GIT_SSH_KEY") or None,
        git_known_hosts=environ.get("HEADWATER_GIT_KNOWN_HOSTS") or None,
        **extra,
    )


def _positive(flag: str, value: float) -> float:
    if not value > 0:
        raise ValueError(f"{flag} must be a positive number of seconds, not {value}")
    return value


def _rates(text: str) -> str:
    from providers.errors import parse_rates

    try:
        parse_rates(text or "")
    except ValueError as exc:
        raise ValueError(f"--api-rates: {exc}") from None
    return text or ""


def _boolean(raw: str) -> bool:
    value = raw.strip().lower()
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    raise ValueError(raw)
