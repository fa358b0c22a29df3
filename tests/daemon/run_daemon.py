"""`headwater run` for the SIGTERM test: the real entry point (settings from the environment,
signal handling, exit code), with the test's providers (no Beam pipelines on this machine)."""

from __future__ import annotations

import argparse
import sys

from support import emulator_providers

from reconciler.daemon import run
from reconciler.daemon import settings as daemon_settings

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    daemon_settings.add_arguments(parser)
    daemon_settings.apply_env_defaults(parser)
    sys.exit(run(daemon_settings.from_args(parser.parse_args()), providers_factory=emulator_providers))
