"""The command line's rough edges (issue 9): one `error:` line (never a traceback) when the
endpoints or credentials are missing, saying how to use the local emulators; no option
abbreviations; every subcommand describes itself."""

from __future__ import annotations

import pytest
from google.api_core import exceptions as gexc
from google.auth import exceptions as auth_exceptions
from helpers import copy_example

from providers import EMULATOR_VARS
from providers.errors import PermanentError, translate
from providers.memory import MemoryProvider
from reconciler import cli
from reconciler.engine import Engine

CLOUD_HINT = ("(to use Google Cloud: gcloud auth application-default login; to try headwater without a cloud "
              'account, on the local emulators: eval "$(headwater local up)", then run this again)')


@pytest.fixture
def no_emulators(monkeypatch):
    for name in EMULATOR_VARS:
        monkeypatch.delenv(name, raising=False)


class Failing(MemoryProvider):
    def __init__(self, error: BaseException) -> None:
        super().__init__()
        self.error = error

    def observe(self, kind):
        raise self.error


FAILURES = [
    # (id, raised while observing, emulator variables, the one line expected on stderr)
    ("credentials-missing", PermanentError("pubsub.list_topics: Your default credentials were not found."), {},
     f"error: pubsub.list_topics: Your default credentials were not found. {CLOUD_HINT}"),
    ("client-built-outside-the-error-mapping",
     auth_exceptions.DefaultCredentialsError("Your default credentials were not found."), {},
     f"error: Google Cloud: Your default credentials were not found. {CLOUD_HINT}"),
    ("unauthenticated", translate(gexc.Unauthenticated("Request had invalid authentication credentials."),
                                  "storage.list_buckets"), {},
     f"error: storage.list_buckets: Request had invalid authentication credentials. {CLOUD_HINT}"),
    ("emulators-not-answering",
     translate(gexc.ServiceUnavailable("failed to connect to all addresses"), "pubsub.list_topics"),
     {"PUBSUB_EMULATOR_HOST": "127.0.0.1:9"},
     "error: pubsub.list_topics: failed to connect to all addresses (the local emulators at "
     'PUBSUB_EMULATOR_HOST=127.0.0.1:9 do not answer: start them with eval "$(headwater local up)", or unset '
     "those variables to use Google Cloud)"),
    ("permission-denied-needs-no-emulator-hint",
     translate(gexc.PermissionDenied("caller lacks pubsub.topics.list"), "pubsub.list_topics"), {},
     "error: pubsub.list_topics: caller lacks pubsub.topics.list"),
]


@pytest.mark.parametrize("command", ["plan", "drift", "apply"])
@pytest.mark.parametrize(("error", "env", "expected"), [f[1:] for f in FAILURES], ids=[f[0] for f in FAILURES])
def test_missing_endpoints_or_credentials_end_in_one_error_line(tmp_path, no_emulators, monkeypatch, capsys,
                                                               command, error, env, expected):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(cli, "_engine", lambda state, args=None: Engine([Failing(error)]))
    argv = [command, "--repo", str(copy_example(tmp_path)), *(["--auto-approve"] if command == "apply" else [])]
    assert cli.main(argv) == 1
    captured = capsys.readouterr()
    assert captured.err.strip() == expected
    assert captured.out == ""


@pytest.mark.parametrize("command", ["plan", "drift", "apply"])
def test_the_real_providers_without_credentials_end_in_one_error_line(tmp_path, no_emulators, monkeypatch, capsys,
                                                                     command):
    """No emulator variables, no Application Default Credentials (an empty gcloud config, no
    metadata server): whatever client fails first, the command ends with the one line."""
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    monkeypatch.setenv("NO_GCE_CHECK", "True")
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    repo = copy_example(tmp_path, sources=["orders", "clickstream"])  # no connector secrets to look up
    argv = [command, "--repo", str(repo), *(["--auto-approve"] if command == "apply" else [])]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert "default credentials were not found" in err.lower() and err.endswith(CLOUD_HINT)


@pytest.mark.parametrize("argv", [
    pytest.param(["validate", "--rep", "desired_state"], id="validate-rep"),
    pytest.param(["plan", "--rep", "desired_state"], id="plan-rep"),
    pytest.param(["plan", "--form", "json"], id="plan-form"),
    pytest.param(["apply", "--auto"], id="apply-auto"),
    pytest.param(["drift", "--repo", "x", "--run", "local"], id="drift-run"),
    pytest.param(["demo", "--kee"], id="demo-kee"),
    pytest.param(["local", "up", "--proj", "p"], id="local-up-proj"),
    pytest.param(["run", "--rep", "x"], id="run-rep"),
])
def test_option_abbreviations_are_errors(argv, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err


SUBCOMMANDS = [["validate"], ["plan"], ["apply"], ["drift"], ["local"], ["local", "up"], ["local", "down"],
               ["local", "run"], ["run"], ["demo"]]


@pytest.mark.parametrize("argv", SUBCOMMANDS, ids=["-".join(a) for a in SUBCOMMANDS])
def test_every_subcommand_describes_itself(argv, capsys):
    with pytest.raises(SystemExit):
        cli.main([*argv, "--help"])
    out = capsys.readouterr().out
    description = out.split("\n\n", 2)[1]  # usage, then the description, then the options
    assert not description.startswith(("options:", "positional arguments:")), out
    assert len(description.split()) >= 8, out


def test_format_has_help_and_local_up_says_to_eval(capsys):
    with pytest.raises(SystemExit):
        cli.main(["plan", "--help"])
    plan_help = " ".join(capsys.readouterr().out.split())
    assert "--format {text,json,markdown} text for people (default), json for tools" in plan_help
    with pytest.raises(SystemExit):
        cli.main(["drift", "--help"])
    assert "--format {text,json} text for people (default), json for tools" in " ".join(capsys.readouterr().out.split())
    with pytest.raises(SystemExit):
        cli.main(["local", "up", "--help"])
    assert '    eval "$(headwater local up)"\n' in capsys.readouterr().out


def test_local_run_names_a_job_that_is_not_a_running_batch_job(tmp_path, capsys):
    repo = copy_example(tmp_path)
    assert cli.main(["local", "run", "orders-ingest", "--repo", str(repo), "--state-dir", str(tmp_path / "s")]) == 1
    assert capsys.readouterr().err.strip() == "error: local job orders-ingest is not a running batch job"
