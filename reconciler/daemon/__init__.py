"""The GitOps daemon: ``headwater run``.

It tracks one branch of the desired-state repository and keeps the platform converged on it:
each new commit is validated, planned and applied through the core (`reconciler.engine`), drift
between commits is watched (and, with ``--self-heal``, repaired by updates only), people are
alerted when something changes, and Prometheus can scrape what is going on.

Modules, in the order a reader needs them:

* `reconciler.daemon.service`: the `Daemon`, its sync and drift passes, and shutdown;
* `reconciler.daemon.settings`: flags and their ``HEADWATER_*`` environment twins;
* `reconciler.daemon.gitsource`: clone/fetch/checkout with credentials from the environment;
* `reconciler.daemon.lease`: one applier at a time (lease in a Cloud Storage object);
* `reconciler.daemon.alerts`: state-change alerts to a webhook and/or a Pub/Sub topic;
* `reconciler.daemon.metrics`, `reconciler.daemon.server`, `reconciler.daemon.logs`.

See docs/daemon.md for operating it.
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any

from reconciler.daemon import settings as _settings


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Register the daemon's subcommands (``run``) on the CLI's subparsers."""
    parser = commands.add_parser(
        "run", help="run the GitOps daemon: converge on every commit, watch drift, serve metrics",
        description="Track a branch of the desired-state repository and converge on every new commit; watch "
                    "for drift in between; serve /healthz, /readyz, /status, /metrics and the GitHub push "
                    "/webhook (docs/daemon.md). "
                    "Every flag has an environment twin HEADWATER_<FLAG> (e.g. HEADWATER_POLL_INTERVAL). "
                    "Secrets come only from the environment: HEADWATER_WEBHOOK_SECRET, HEADWATER_GIT_TOKEN "
                    "or HEADWATER_GIT_SSH_KEY (+ HEADWATER_GIT_KNOWN_HOSTS).",
        allow_abbrev=False,
    )
    _settings.add_arguments(parser)
    _settings.apply_env_defaults(parser)
    parser.set_defaults(handler=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    try:
        settings = _settings.from_args(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return run(settings)


def run(settings: _settings.Settings, **daemon_options: Any) -> int:
    """Serve until SIGTERM or SIGINT, then shut down gracefully; the process's exit code."""
    from reconciler.daemon.gitsource import GitSourceError
    from reconciler.daemon.service import Daemon

    try:
        daemon = Daemon(settings, **daemon_options)
    except GitSourceError as exc:  # e.g. credentials for a plain http:// remote; the message is redacted
        print(f"error: {exc}", file=sys.stderr)
        return 1

    def on_signal(signum: int, _frame: object) -> None:
        daemon.request_stop(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        return daemon.serve()
    except OSError as exc:  # e.g. the listen address is taken
        print(f"error: {exc}", file=sys.stderr)
        return 1
