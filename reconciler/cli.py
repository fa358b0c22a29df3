"""The ``headwater`` command line.

    headwater validate [--repo PATH]
    headwater plan     [--repo PATH] [--format text|json|markdown] [--prune] [--allow-destroy] [--runner R]
    headwater apply    [--repo PATH] [--auto-approve] [--prune] [--allow-destroy] [--runner R]
    headwater drift    [--repo PATH] [--format text|json] [--runner R]
    headwater status   [--repo PATH] [--format text|json] [--runner R]
    headwater ui       [--repo PATH] [--host H] [--port N] [--refresh S] [--runner R]
    headwater local up | down
    headwater demo     [--repo PATH]

``--runner local|dataflow`` says where ``dataflow_job`` resources run: on this machine's Beam
runner (the default when an ``*_EMULATOR_HOST`` variable is set; jobs are tracked under
``--state-dir``, default ``$HEADWATER_STATE_DIR`` or ``.headwater``) or on Dataflow.

Exit codes: validate 0 valid / 1 invalid; plan 0 no changes / 2 changes / 1 error or refused;
apply 0 converged / 1 failed, blocked or refused; drift 0 none / 2 drift / 1 error; status 0 every
source healthy or progressing / 2 one degraded, missing or unknown / 1 error.

Results (plans, drift reports, environment variables) go to stdout; progress and errors go to
stderr, so ``--format json`` output stays parseable.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

from providers import errors as provider_errors
from providers.errors import ProviderError, TemporaryError, translate
from reconciler import local
from reconciler.apply import FAILED, SKIPPED, ApplyResult, Outcome
from reconciler.compile import compile_resources
from reconciler.engine import Engine, drift_of, plan_options
from reconciler.load import DesiredState, InvalidDesiredState, RepoNotFound, load_repo
from reconciler.plan import Plan
from reconciler.render import render, render_text, summary_line
from reconciler.resources import Kind

EXIT_OK, EXIT_ERROR, EXIT_CHANGES = 0, 1, 2
DEFAULT_STATE_DIR = Path(".headwater")


class CommandError(Exception):
    """A failure to report on stderr with exit code 1 (no traceback)."""


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        # Retry deadlines and API budgets: HEADWATER_CALL_DEADLINE, HEADWATER_APPLY_DEADLINE,
        # HEADWATER_API_RATES (providers/errors.py).
        provider_errors.configure_from_env()
    except ValueError as exc:
        _err(f"error: {exc}")
        return EXIT_ERROR
    args.apply_budget = provider_errors.Budget()
    try:
        return args.handler(args)
    except CommandError as exc:
        _err(f"error: {exc}")
        return EXIT_ERROR
    except RepoNotFound as exc:
        _err(f"error: {exc.problems[0]}")
        return EXIT_ERROR
    except InvalidDesiredState as exc:
        _report_invalid(exc)
        return EXIT_ERROR
    except local.LocalSetupError as exc:
        _err(f"error: {exc}")
        return EXIT_ERROR
    except ProviderError as exc:
        # A provider error already says which call failed and why (never a request body).
        _err(f"error: {exc}{_endpoint_hint(exc)}")
        return EXIT_ERROR
    except KeyboardInterrupt:
        _err("interrupted")
        return 130
    except Exception as exc:
        # A Google client built outside the providers' error mapping (e.g. missing credentials
        # found while a client is created): the same one line as any provider error.
        if not _from_google(exc):
            raise
        error = translate(exc, "Google Cloud")
        _err(f"error: {error}{_endpoint_hint(error, exc)}")
        return EXIT_ERROR


def _from_google(exc: BaseException) -> bool:
    module = type(exc).__module__
    return module.startswith(("google.auth", "google.api_core", "google.cloud", "grpc", "requests", "urllib3"))


def _endpoint_hint(error: ProviderError, original: BaseException | None = None) -> str:
    """How to reach an endpoint, when the error says headwater could not: the local emulators."""
    from providers import EMULATOR_VARS

    cause = original or error.__cause__
    emulators = [f"{name}={os.environ[name]}" for name in EMULATOR_VARS if os.environ.get(name)]
    if emulators:
        if isinstance(error, TemporaryError):
            return (f" (the local emulators at {', '.join(emulators)} do not answer: start them with "
                    'eval "$(headwater local up)", or unset those variables to use Google Cloud)')
        return ""
    text = str(error).lower()
    auth = "credentials" in text or type(cause).__module__.startswith("google.auth") or \
        type(cause).__name__ in ("Unauthenticated", "Unauthorized")
    if auth or isinstance(error, TemporaryError):
        return (" (to use Google Cloud: gcloud auth application-default login; to try headwater without a "
                'cloud account, on the local emulators: eval "$(headwater local up)", then run this again)')
    return ""


# --------------------------------------------------------------------------- commands


def cmd_validate(args: argparse.Namespace) -> int:
    state = load_repo(args.repo)
    resources = compile_resources(state)
    print(f"Valid: {len(state.sources)} sources, {len(resources)} resources ({args.repo})")
    return EXIT_OK


def cmd_plan(args: argparse.Namespace) -> int:
    state = load_repo(args.repo)
    plan = _engine(state, args).plan(state, plan_options(state, prune=args.prune, allow_destroy=args.allow_destroy,
                                                         adopt=args.adopt))
    if args.base:  # a pull request's dry run: what the PR changes, then the plan
        from reconciler import pr

        sys.stdout.write(pr.summary(state, args.base, args.format))
    sys.stdout.write(render(plan, args.format))
    if plan.refused:
        return EXIT_ERROR
    return EXIT_CHANGES if plan.has_changes else EXIT_OK


def cmd_apply(args: argparse.Namespace) -> int:
    state = load_repo(args.repo)
    engine = _engine(state, args)
    plan = engine.plan(state, plan_options(state, prune=args.prune, allow_destroy=args.allow_destroy,
                                           adopt=args.adopt))
    sys.stdout.write(render_text(plan))
    if plan.refused:
        return EXIT_ERROR
    if not plan.actionable:
        return _blocked_exit(plan)
    if not args.auto_approve and not _confirm(len(plan.actionable)):
        _err("Apply cancelled; nothing was changed.")
        return EXIT_ERROR
    args.apply_budget.start()  # every call of the apply stops retrying at HEADWATER_APPLY_DEADLINE
    result = engine.apply(plan, on_outcome=_print_outcome)
    print(result.summary())
    _print_failures(result)
    _print_local_services(engine)
    return EXIT_ERROR if not result.ok else _blocked_exit(plan)


# --- adopt (issue 9, kind 8) ---------------------------------------------------------------------


def cmd_adopt(args: argparse.Namespace) -> int:
    """Import only the named resources (see the parser's description)."""
    import dataclasses

    from reconciler.plan import Action

    state = load_repo(args.repo)
    engine = _engine(state, args)
    plan = engine.plan(state, plan_options(state, adopt=args.addresses))
    imports = {c.address: c for c in plan.changes if c.action == Action.IMPORT}
    unknown = [a for a in args.addresses if a not in imports]
    if unknown:
        states = {c.address: c for c in plan.changes}
        detail = "; ".join(f"{a}: " + (f"its plan is {states[a].action}, not an import" if a in states
                                       else "not a declared resource") for a in unknown)
        raise CommandError(f"nothing to adopt there ({detail}); only an existing resource that headwater does not "
                           "manage can be adopted")
    plan = dataclasses.replace(plan, changes=tuple(imports[a] for a in args.addresses))
    sys.stdout.write(render_text(plan))
    if plan.blocked:
        return _blocked_exit(plan)
    if not args.auto_approve and not _confirm(len(plan.actionable)):
        _err("Adopt cancelled; nothing was changed.")
        return EXIT_ERROR
    args.apply_budget.start()  # as apply: every call stops retrying at HEADWATER_APPLY_DEADLINE
    result = engine.apply(plan, on_outcome=_print_outcome)
    print(result.summary())
    _print_failures(result)
    return EXIT_OK if result.ok else EXIT_ERROR


# --- end adopt ------------------------------------------------------------------------------------


def _print_local_services(engine: Engine) -> None:
    """Where the connectors run on the local stand-in for Cloud Run (a webhook's URL is its
    path there); nothing on Cloud Run, where the console and ``gcloud run services`` tell."""
    runner = engine.providers.get(Kind.CLOUD_RUN_SERVICE)
    if not hasattr(runner, "service_url"):
        return
    for service in sorted(engine.observe([Kind.CLOUD_RUN_SERVICE]), key=lambda r: r.name):
        with contextlib.suppress(Exception):  # recorded-only services have no process, hence no URL
            webhook = (service.spec.get("connector") or {}).get("webhook") or {}
            _err(f"local connector {service.name}: {runner.service_url(service.name)}{webhook.get('path', '')}")


def cmd_drift(args: argparse.Namespace) -> int:
    from reconciler.blame import drift_origins

    state = load_repo(args.repo)
    plan = _engine(state, args).plan(state)
    drift = drift_of(plan)
    # Who set each desired value: git blame of the line that declares it (reconciler/blame.py).
    origins = drift_origins(state, plan)
    if args.format == "json":
        print(json.dumps({
            "format_version": "1",
            "revision": state.revision,
            "drift": [
                {"address": d.address, "kind": str(d.kind), "state": d.state,
                 "origin": origins[d.address][""].to_dict() if "" in origins.get(d.address, {}) else None,
                 "fields": [{"path": p, "live": live, "desired": want,
                             "origin": origins[d.address][p].to_dict() if p in origins.get(d.address, {}) else None}
                            for p, live, want in d.fields]}
                for d in drift
            ],
        }, indent=2, default=str))
    else:
        for item in drift:
            declared = origins.get(item.address, {}).get("")
            print(f"{item.address}: {item.state}" + (f" (declared {declared.describe().removeprefix('set ')})"
                                                     if declared else ""))
            for path, live, want in item.fields:
                print(f"    {path}: live {json.dumps(live, default=str)}, desired {json.dumps(want, default=str)}")
                if path in origins.get(item.address, {}):
                    print(f"        desired value {origins[item.address][path].describe()}")
        print(f"{len(drift)} resources drifted." if drift else "No drift: live state matches the desired state.")
    return EXIT_CHANGES if drift else EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    """Health beside sync, per source (reconciler/status.py)."""
    from reconciler import status

    state = load_repo(args.repo)
    health, _plan = status.check(state, _engine(state, args))
    sys.stdout.write(status.render(health, args.format))
    return status.exit_code(health)


def cmd_ui(args: argparse.Namespace) -> int:
    """The status page on this machine (reconciler/ui/local.py)."""
    from reconciler.ui import local as ui_local

    def compute() -> dict:
        return ui_local.status_document(args.repo, lambda state: _engine(state, args))

    page = ui_local.LocalStatus(compute)
    page.set(compute())  # the first check before serving: its errors end the command, as `status`'s do
    return ui_local.serve(page, args.host, args.port, args.refresh, announce=_err)


def cmd_local_up(args: argparse.Namespace) -> int:
    _err("Starting the Pub/Sub, Cloud Storage and BigQuery emulators...")
    emulators = local.start(args.state_dir, project=args.project)
    for name, value in emulators.env().items():
        print(f"export {name}={value}")
    # Later commands (and `local down`) then find the same state: local jobs, connectors, secrets.
    state_dir = Path(args.state_dir).resolve()
    print(f"export HEADWATER_STATE_DIR={state_dir}")
    _err(f"Emulators running (state in {state_dir}; connectors' secrets go in {state_dir / 'secrets'}). "
         f"Stop them with: headwater local down --state-dir {state_dir}")
    if emulators.postgres:  # database_cdc's source database (issue 10)
        pg = emulators.postgres
        _err(f"PostgreSQL {pg['PGHOST']}:{pg['PGPORT']} (wal_level logical, wal2json), user {pg['PGUSER']}, its password "
             f"in {state_dir / 'postgres' / 'password'}; psql connects with the variables above. A connection "
             f"profile pointing there reads its password from {state_dir / 'secrets'}/<password_secret>.")
    return EXIT_OK


def cmd_local_down(args: argparse.Namespace) -> int:
    from providers import stop_local

    # Jobs first: a streaming job stopped after its emulator would fail its last pulls.
    jobs = stop_local(args.state_dir)
    if jobs:
        _err(f"Local jobs, connectors and file watchers stopped: {', '.join(jobs)}.")
    stopped = local.stop(args.state_dir)
    _err("Emulators stopped." if stopped else "No emulators were running.")
    return EXIT_OK


def cmd_local_run(args: argparse.Namespace) -> int:
    """Run a local batch job now (what its next cron tick would do); where its output goes."""
    from providers.localrunner import LocalRunnerProvider, jobs_dir

    state = load_repo(args.repo)
    state_dir = Path(args.state_dir)
    runner = LocalRunnerProvider(state.platform.project, state_dir)
    before = runner.run_now(args.job)  # PermanentError (one error line) unless a running batch job
    log = jobs_dir(state_dir, state.platform.project) / f"{args.job}.log"
    _err(f"{args.job}: run {before + 1} started; its output goes to {log}")
    if args.wait is None:
        return EXIT_OK
    try:
        status = runner.wait_for_run(args.job, before, timeout=args.wait)
    except TimeoutError as exc:
        raise CommandError(f"{exc}; it goes on in the background (see {log})") from None
    code = status.get("last_exit_code")
    _err(f"{args.job}: run {before + 1} finished with exit code {code}")
    return EXIT_OK if code == 0 else EXIT_ERROR


def cmd_demo(args: argparse.Namespace) -> int:
    """Start the emulators, validate/plan/apply the example, plan again, move the sample data, stop.

    The example's Dataflow jobs run on the local runner; the sample data (``sample-data/``: files
    for the batch source, events for the streaming ones, bad and duplicate records included)
    goes through them, and the counts of what reached Silver, Gold and the dead letters are
    printed (`reconciler.demo`).
    """
    from providers import stop_local
    from reconciler.demo import prepare_repo

    state = load_repo(args.repo)  # invalid example → stop before starting anything
    _err(f"[1/6] valid: {len(state.sources)} sources ({', '.join(state.source_ids)})")
    _err("[2/6] starting the local emulators, the local secrets and the sample APIs...")
    already_running = local.load(args.state_dir) is not None
    emulators = local.start(args.state_dir, project=state.platform.project)
    connectors = prepare_repo(Path(args.repo), Path(args.state_dir), _err)
    state = load_repo(connectors.repo)
    # The emulators have no Dataflow or Cloud Run: jobs and connectors run here, for real.
    env = {**emulators.env(), "HEADWATER_LOCAL_JOBS": "run",
           "HEADWATER_SECRETS_DIR": str(Path(args.state_dir).resolve() / "secrets")}
    args.runner = "local"
    try:
        with local.exported(env):
            return _demo_steps(state, args, connectors)
    finally:
        connectors.stop()
        if not args.keep and not already_running:
            stop_local(args.state_dir)
            local.stop(args.state_dir)
            _err("Local jobs and emulators stopped.")


def _demo_steps(state: DesiredState, args: argparse.Namespace, connectors) -> int:
    """The demo once the emulators run: plan, apply, plan again, move the sample data."""
    from reconciler.demo import seed_reference_tables

    seed_reference_tables(state, _err)  # what the gold joins read: a plan refuses a join to nothing
    engine = _engine(state, args)
    plan = engine.plan(state, plan_options(state))
    _err("[3/6] plan:")
    sys.stdout.write(render_text(plan))
    _err("[4/6] applying (the Dataflow jobs start on the local runner)...")
    result = engine.apply(plan, on_outcome=_print_outcome)
    print(result.summary())
    _print_failures(result)
    _err("[5/6] planning again (expecting no changes):")
    again = engine.plan(state, plan_options(state))
    print(summary_line(again))
    counts = {}
    for resource in engine.observe():
        counts[str(resource.kind)] = counts.get(str(resource.kind), 0) + 1
    print("Live on the emulators: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    converged = result.ok and not again.has_changes
    if not converged:
        print("Demo finished WITHOUT converging.")
        return EXIT_ERROR
    _err("[6/6] moving the sample data through the jobs:")
    from reconciler.demo import move_sample_data, report

    runner = engine.providers[Kind.DATAFLOW_JOB]
    results = move_sample_data(state, runner, _err, connectors)
    for line in report(results):
        print(line)
    from reconciler import serving_demo  # issue 12: reporting views, the data API, feature tables

    for line in serving_demo.show(state, runner, _err, connectors.secrets if connectors else {}):
        print(line)
    if not all(r.matches() for r in results):
        print("Demo finished: the platform converged, but the data counts differ from sample-data/expected.json.")
        return EXIT_ERROR
    print("Demo complete: the platform converged and moved the sample data.")
    return EXIT_OK


# --------------------------------------------------------------------------- helpers


def _engine(state: DesiredState, args: argparse.Namespace) -> Engine:
    from providers import build_providers, build_secret_store

    secrets = build_secret_store(state.platform.project, runner=args.runner, state_dir=args.state_dir)
    providers = build_providers(state.platform.project, state.platform.region, runner=args.runner,
                                state_dir=args.state_dir, platform=state.platform)
    budget = getattr(args, "apply_budget", None) or provider_errors.Budget()
    # check_references: a landing bucket or joined table neither declared nor existing is a plan error.
    return Engine([provider_errors.bounded(p, budget) for p in providers], secrets=secrets, check_references=True)


def _default_state_dir() -> Path:
    return Path(os.environ.get("HEADWATER_STATE_DIR") or DEFAULT_STATE_DIR)


def _confirm(count: int) -> bool:
    if not sys.stdin.isatty():
        raise CommandError("refusing to apply without confirmation: stdin is not a terminal; pass --auto-approve")
    answer = input(f"Apply {count} changes? Only 'yes' is accepted: ")
    return answer.strip() == "yes"


def _blocked_exit(plan: Plan) -> int:
    if plan.blocked:
        _err(f"{len(plan.blocked)} changes are blocked (see the plan); the platform has not fully converged.")
        return EXIT_ERROR
    if not plan.has_changes or not plan.actionable:
        print("Nothing to apply.")
    return EXIT_OK


def _print_outcome(outcome: Outcome) -> None:
    detail = f": {outcome.error}" if outcome.error else ""
    _err(f"  {outcome.status:<7} {outcome.action:<7} {outcome.address} ({outcome.seconds:.2f}s){detail}")


def _print_failures(result: ApplyResult) -> None:
    for outcome in result.outcomes:
        if outcome.status in (FAILED, SKIPPED):
            _err(f"  {outcome.status}: {outcome.address}: {outcome.error}")


def _report_invalid(exc: InvalidDesiredState) -> None:
    for problem in exc.problems:
        _err(str(problem))
    _err(f"{len(exc.problems)} problems found; nothing was changed.")


def _err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _paragraphs(text: str, width: int = 88) -> str:
    """Wrap each line of a description to ``width``; indented lines (commands to copy) stay as written."""
    import textwrap

    return "\n".join(line if line.startswith(" ") or not line else textwrap.fill(line, width)
                     for line in text.split("\n"))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="headwater", description="GitOps for a Google Cloud data platform.",
                                     allow_abbrev=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str, description: str, subparsers=commands) -> argparse.ArgumentParser:
        # allow_abbrev=False: `--rep` is an error, not `--repo` (a typo must not pick an option).
        return subparsers.add_parser(name, help=summary, description=_paragraphs(description), allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)

    def with_repo(p: argparse.ArgumentParser, default: str = ".") -> argparse.ArgumentParser:
        p.add_argument("--repo", type=Path, default=Path(default), help=f"desired-state directory (default {default})")
        return p

    def with_runner(p: argparse.ArgumentParser) -> None:
        p.add_argument("--runner", choices=("local", "dataflow"), default=None,
                       help="where dataflow_job resources run (default: local when an *_EMULATOR_HOST is set)")
        p.add_argument("--state-dir", type=Path, default=_default_state_dir(),
                       help="where the local runner tracks its jobs (default $HEADWATER_STATE_DIR or .headwater)")

    def with_safety(p: argparse.ArgumentParser) -> None:
        p.add_argument("--prune", action="store_true", help="delete managed resources that are no longer declared")
        p.add_argument("--allow-destroy", action="store_true",
                       help="permit deleting or replacing data-holding resources (buckets, datasets, tables, "
                            "topics, subscriptions) without deletion_protection")
        p.add_argument("--adopt", action="append", default=[], metavar="ADDRESS",
                       help="take over this existing resource that headwater does not manage (repeatable); "
                            "the plan shows it as an import")

    endpoints = ("Endpoints: with PUBSUB_EMULATOR_HOST, STORAGE_EMULATOR_HOST and BIGQUERY_EMULATOR_HOST set "
                 '(eval "$(headwater local up)" sets them) headwater talks to the local emulators; without them, '
                 "to Google Cloud with Application Default Credentials.")

    p = with_repo(command("validate", "check the desired state; no API calls",
                          "Read and validate the desired-state repo: every problem of every file, each as "
                          "file:line:col: field: message. No API call is made.\nExit 0 valid, 1 invalid."))
    p.set_defaults(handler=cmd_validate)

    p = with_repo(command("plan", "show what apply would change",
                          "Validate, observe live state and print the plan: what apply would create, update, "
                          "replace or delete, with blocked changes and why. Changes nothing.\n"
                          f"Exit 0 no changes, 2 changes, 1 error or plan refused.\n\n{endpoints}"))
    p.add_argument("--format", choices=("text", "json", "markdown"), default="text",
                   help="text for people (default), json for tools (stable, versioned), markdown for a "
                        "pull-request comment")
    p.add_argument("--base", metavar="REF",
                   help="pull-request dry run: first summarize what the desired state changed since REF")
    with_safety(p)
    with_runner(p)
    p.set_defaults(handler=cmd_plan)

    p = with_repo(command("apply", "plan, confirm, and converge live state",
                          "Plan, ask for confirmation (only 'yes' is accepted; --auto-approve skips it), then "
                          "apply the changes in dependency order. Blocked changes are never applied.\n"
                          f"Exit 0 converged, 1 failed, blocked changes left, refused or cancelled.\n\n{endpoints}"))
    p.add_argument("--auto-approve", action="store_true", help="do not ask for confirmation")
    with_safety(p)
    with_runner(p)
    p.set_defaults(handler=cmd_apply)

    # --- adopt (issue 9, kind 8): take over existing resources headwater does not manage --------
    p = with_repo(command("adopt", "take over existing resources that headwater does not manage",
                          "A declared resource that already exists but is not this platform's (no managed-by="
                          "headwater label, or another platform's) is never touched: plans show it as an import, "
                          "blocked. adopt imports the given addresses only: it labels each as this platform's "
                          "(keeping its other labels) and updates its declared fields that differ; from then on it "
                          "is managed like any other. A resource that would need a replacement is never adopted.\n"
                          f"Exit 0 adopted, 1 failed, refused or cancelled.\n\n{endpoints}"))
    p.add_argument("addresses", nargs="+", metavar="ADDRESS", help="e.g. storage_bucket.landing-acme-europe-west1")
    p.add_argument("--auto-approve", action="store_true", help="do not ask for confirmation")
    with_runner(p)
    p.set_defaults(handler=cmd_adopt)
    # --- end adopt ---------------------------------------------------------------------------

    p = with_repo(command("drift", "compare live state with the desired state",
                          "Report the declared resources whose live state differs from the desired state (changed "
                          "by hand, or missing). Changes nothing.\nExit 0 no drift, 2 drift, 1 error.\n\n"
                          f"{endpoints}"))
    p.add_argument("--format", choices=("text", "json"), default="text",
                   help="text for people (default), json for tools")
    with_runner(p)
    p.set_defaults(handler=cmd_drift)

    p = with_repo(command("status", "health beside sync, one line per source",
                          "Per source: sync (does live state match the repo), health (Healthy, Progressing, "
                          "Degraded, Missing, Unknown, with the reason: failed or crashed jobs and their error, "
                          "connectors, freshness against monitoring.sla_minutes, dead letters), and the last change "
                          "to its files. Changes nothing.\nExit 0 every source healthy (or progressing), 2 one is "
                          f"degraded, missing or unknown, 1 error.\n\n{endpoints}"))
    p.add_argument("--format", choices=("text", "json"), default="text",
                   help="text for people (default), json for tools (the health document, docs/daemon.md)")
    with_runner(p)
    p.set_defaults(handler=cmd_status)

    p = with_repo(command("ui", "serve the status page on this machine",
                          "Serve the daemon's read-only status page locally: every source with its sync, health, "
                          "freshness against its SLA, dead letters and last change, and a page per source (resources "
                          "with Cloud Console links, drift with the commit that set each value, the plan's changes, "
                          "errors and job logs). Computed like `headwater status`, again every --refresh seconds. "
                          f"Changes nothing. Ctrl-C stops it.\n\n{endpoints}"))
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: the page has no "
                                                        "authentication)")
    p.add_argument("--port", type=int, default=8081, help="port (default 8081; 0 picks a free one)")
    p.add_argument("--refresh", type=float, default=60.0, metavar="SECONDS",
                   help="seconds between status checks (default 60)")
    with_runner(p)
    p.set_defaults(handler=cmd_ui)

    local_parser = command("local", "local emulators for your own experiments",
                           "Start or stop the Pub/Sub, Cloud Storage and BigQuery emulators on free loopback ports.")
    local_commands = local_parser.add_subparsers(dest="local_command", required=True, metavar="up|down|run")
    for name, handler, summary, description in (
        ("up", cmd_local_up, "start the emulators; prints the variables to export",
         "Start the three emulators (state under --state-dir) and print the environment variables that point "
         "headwater and the Google client libraries at them, as export lines. Run it through eval, so that "
         "your shell gets them:\n\n"
         '    eval "$(headwater local up)"\n\n'
         "then validate, plan and apply as usual; `headwater local down` stops everything."),
        ("down", cmd_local_down, "stop the emulators, local jobs, connectors and file watchers",
         "Stop the local Dataflow jobs, connectors and file watchers first, then the emulators."),
    ):
        p = command(name, summary, description, local_commands)
        p.add_argument("--state-dir", type=Path, default=_default_state_dir(),
                       help="where the emulators keep their state (default $HEADWATER_STATE_DIR or .headwater)")
        p.add_argument("--project", default="headwater-local", help="default project of the BigQuery emulator")
        p.set_defaults(handler=handler)
    p = with_repo(command("run", "run a local batch job now, instead of at its next cron tick",
                          "Run one of the platform's batch jobs on the local runner now (an ingestion with a "
                          "schedule, a sweep, a gold job), as its next cron tick would; prints where its output "
                          "goes (<state dir>/jobs/<project>/<job>.log). On Dataflow the same is:\n\n"
                          "    gcloud scheduler jobs run headwater-<environment>-<job> --location <region>",
                          local_commands))
    p.add_argument("job", help="the job's name, e.g. orders-gold-orders-daily (the dataflow_job address without "
                               "its kind)")
    p.add_argument("--state-dir", type=Path, default=_default_state_dir(),
                   help="where the local runner tracks its jobs (default $HEADWATER_STATE_DIR or .headwater)")
    p.add_argument("--wait", type=float, metavar="SECONDS",
                   help="wait up to SECONDS for the run to finish; exit 0 only if it succeeded")
    p.set_defaults(handler=cmd_local_run)

    from reconciler.daemon import add_commands

    add_commands(commands)

    p = with_repo(command("demo", "run the example platform on the local emulators",
                          "Start the emulators, validate, plan and apply the example platform, plan again "
                          "(expecting no changes), move the sample data through the jobs and print the counts, "
                          "then stop everything (about half a minute; --keep leaves it running)."), "desired_state")
    p.add_argument("--state-dir", type=Path, default=_default_state_dir(),
                   help="where the emulators and local jobs keep their state (default $HEADWATER_STATE_DIR or .headwater)")
    p.add_argument("--keep", action="store_true", help="leave the emulators running afterwards")
    p.set_defaults(handler=cmd_demo)
    return parser


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
