"""The GitOps daemon (`headwater run`): see issue 3. Filled in by reconciler/daemon/*."""

from __future__ import annotations

import argparse


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Register the daemon's subcommands (``run``) on the CLI's subparsers."""
