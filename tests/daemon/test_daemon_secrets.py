"""Secrets through side doors (issue 9, kind 14): a token in the --repo URL, a token and plain
http://, and values that look like secrets in error messages, /status, logs and alerts.

The git remote is a real one: ``git http-backend`` behind a tiny loopback HTTP server that
insists on the expected Basic credentials, so a clone proves the token reached the server.
"""

from __future__ import annotations

import argparse
import base64
import http.server
import os
import subprocess
import threading
from pathlib import Path

import git
import pytest
from support import DesiredRepo, get_json, wait_for

from providers.memory import MemoryProvider
from reconciler.daemon import settings as daemon_settings
from reconciler.daemon.gitsource import (
    GitSource,
    GitSourceError,
    _git_env,
    insecure_remote,
    split_credentials,
)

TOKEN = "ghp_urlToken0123456789abcdef"


class GitHttpServer:
    """Serves the bare repositories under ``root`` with git http-backend; 401 without ``user:token``."""

    def __init__(self, root: Path, user: str, token: str) -> None:
        expected = "Basic " + base64.b64encode(f"{user}:{token}".encode()).decode()
        self.authorizations: list[str | None] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                self._backend()

            def do_POST(self):  # noqa: N802
                self._backend()

            def _backend(self):
                server.authorizations.append(self.headers.get("Authorization"))
                if self.headers.get("Authorization") != expected:
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="git"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                path, _, query = self.path.partition("?")
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                env = {"PATH": os.environ["PATH"], "GIT_PROJECT_ROOT": str(root), "GIT_HTTP_EXPORT_ALL": "1",
                       "PATH_INFO": path, "QUERY_STRING": query, "REQUEST_METHOD": self.command,
                       "CONTENT_TYPE": self.headers.get("Content-Type", ""), "CONTENT_LENGTH": str(len(body)),
                       "REMOTE_USER": user}
                out = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True,
                                     check=True).stdout
                head, _, payload = out.partition(b"\r\n\r\n")
                status = 200
                headers = []
                for line in head.decode().split("\r\n"):
                    name, _, value = line.partition(": ")
                    if name.lower() == "status":
                        status = int(value.split()[0])
                    else:
                        headers.append((name, value))
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def served_repo(tmp_path, project_id, unique):
    repo = DesiredRepo(tmp_path / "git", project_id, unique)
    head = repo.commit_and_push("init")
    server = GitHttpServer(repo.bare_path.parent, "x-access-token", TOKEN)
    yield server, f"http://127.0.0.1:{server.port}/{repo.bare_path.name}", head
    server.close()


@pytest.fixture
def git_commands(monkeypatch):
    """Every git command line GitPython runs (what ``ps`` would show), with its environment."""
    seen: list[tuple[list[str], dict]] = []
    real = git.Git.execute

    def execute(self, command, *args, **kwargs):
        seen.append(([str(c) for c in command], dict(kwargs.get("env") or {})))
        return real(self, command, *args, **kwargs)

    monkeypatch.setattr(git.Git, "execute", execute)
    return seen


def test_a_token_in_the_repo_url_never_reaches_git_config_or_a_command_line(served_repo, tmp_path, git_commands):
    server, url, head = served_repo
    with_token = url.replace("http://", f"http://x-access-token:{TOKEN}@")
    source = GitSource(with_token, "main", tmp_path / "cache")
    assert source.fetch() == head, "the clone authenticated: the token reached the server"
    assert f"Basic {base64.b64encode(f'x-access-token:{TOKEN}'.encode()).decode()}" in server.authorizations
    assert source.url == url and source.display_url == url
    config = (source.workdir / ".git" / "config").read_text()
    assert TOKEN not in config and "x-access-token" not in config and url in config
    assert git_commands, "git ran"
    for argv, _env in git_commands:
        assert not any(TOKEN in part or "x-access-token" in part for part in argv), argv
    assert TOKEN not in str(source.workdir)
    # A second fetch (the daemon's poll) reuses the clone with the same bare URL.
    assert GitSource(with_token, "main", tmp_path / "cache").fetch() == head


def test_the_token_from_the_environment_works_the_same_way(served_repo, tmp_path, git_commands):
    _server, url, head = served_repo
    source = GitSource(url, "main", tmp_path / "cache", token=TOKEN)
    assert source.fetch() == head
    assert TOKEN not in (source.workdir / ".git" / "config").read_text()
    assert all(TOKEN not in " ".join(argv) for argv, _ in git_commands)


def test_without_the_token_the_server_refuses_and_the_error_names_no_secret(served_repo, tmp_path):
    _server, url, _head = served_repo
    with pytest.raises(GitSourceError) as raised:
        GitSource(url.replace("http://", "http://x-access-token:wrong-secret-value@"), "main",
                  tmp_path / "cache").fetch()
    assert "wrong-secret-value" not in str(raised.value) and url in str(raised.value)


def test_the_header_is_scoped_to_the_remote():
    env = _git_env(TOKEN, None, None, remote="https://github.com/o/r.git")

    def header_for(request_url: str) -> str:
        return subprocess.run(["git", "config", "--get-urlmatch", "http.extraHeader", request_url],
                              env={"PATH": os.environ["PATH"], "HOME": "/nonexistent", **env},
                              capture_output=True, text=True).stdout.strip()

    assert header_for("https://github.com/o/r.git/info/refs").startswith("Authorization: Basic ")
    assert header_for("https://evil.example.com/o/r.git/info/refs") == ""
    assert header_for("https://github.com/other/repo.git/info/refs") == ""


@pytest.mark.parametrize(("url", "env_token", "refused"), [
    pytest.param("http://git.example.com/o/r.git", TOKEN, True, id="env-token-plain-http"),
    pytest.param(f"http://u:{TOKEN}@git.example.com/o/r.git", None, True, id="url-token-plain-http"),
    pytest.param(f"http://{TOKEN}@10.0.0.7/o/r.git", None, True, id="url-token-private-address"),
    pytest.param("https://git.example.com/o/r.git", TOKEN, False, id="https"),
    pytest.param("http://127.0.0.1:8080/r.git", TOKEN, False, id="loopback-ipv4"),
    pytest.param("http://[::1]:8080/r.git", TOKEN, False, id="loopback-ipv6"),
    pytest.param("http://localhost/r.git", TOKEN, False, id="localhost"),
    pytest.param("http://git.example.com/o/r.git", None, False, id="no-credentials-public-repo"),
])
def test_credentials_never_go_over_plain_http_except_to_loopback(tmp_path, url, env_token, refused):
    env = {"HEADWATER_REPO": url, **({"HEADWATER_GIT_TOKEN": env_token} if env_token else {})}
    parser = argparse.ArgumentParser()
    daemon_settings.add_arguments(parser)
    daemon_settings.apply_env_defaults(parser, env)
    if refused:
        with pytest.raises(ValueError, match="refusing to send git credentials to http://") as raised:
            daemon_settings.from_args(parser.parse_args([]), env)
        assert TOKEN not in str(raised.value)
        with pytest.raises(GitSourceError, match="over plain http://") as raised:
            GitSource(url, "main", tmp_path, token=env_token)
        assert TOKEN not in str(raised.value)
    else:
        daemon_settings.from_args(parser.parse_args([]), env)
        GitSource(url, "main", tmp_path, token=env_token)


@pytest.mark.parametrize(("url", "expected"), [
    pytest.param(f"https://x-access-token:{TOKEN}@github.com/o/r.git",
                 ("https://github.com/o/r.git", "x-access-token", TOKEN), id="user-and-token"),
    pytest.param(f"https://{TOKEN}@github.com/o/r.git", ("https://github.com/o/r.git", None, TOKEN), id="token-only"),
    pytest.param("https://oauth2:p%40ss@gitlab.example.com:8443/g/r.git",
                 ("https://gitlab.example.com:8443/g/r.git", "oauth2", "p@ss"), id="percent-encoded-port"),
    pytest.param("ssh://git@github.com/o/r.git", ("ssh://git@github.com/o/r.git", None, None), id="ssh-user-kept"),
    pytest.param("git@github.com:o/r.git", ("git@github.com:o/r.git", None, None), id="scp-like"),
    pytest.param("/srv/git/r.git", ("/srv/git/r.git", None, None), id="path"),
])
def test_split_credentials(url, expected):
    assert split_credentials(url) == expected


def test_insecure_remote():
    assert insecure_remote("http://example.com/r") and not insecure_remote("https://example.com/r")
    assert not insecure_remote("http://127.0.0.2/r") and not insecure_remote("/srv/r")


# ---------------------------------------------------------------------- secret-looking values in errors

SECRET_LABEL = "sk_live_51H8xQzLkqFjv0Zr2sXb7pA"  # upper-case letters: not a valid label value


def test_an_invalid_value_that_looks_like_a_secret_never_reaches_status_logs_or_alerts(
        desired_repo, start_daemon, alert_receiver):
    good = desired_repo.repo.head.commit.hexsha
    memory = MemoryProvider()
    running = start_daemon(desired_repo, notify_webhook=alert_receiver.url,
                           daemon_kwargs={"providers_factory": lambda platform: [memory]})
    wait_for(lambda: get_json(running.base, "/status")["revision"] == good, what="first sync")
    desired_repo.edit_yaml("connectors/orders.yaml", lambda d: d.update(labels={"team": SECRET_LABEL}))
    bad = desired_repo.commit_and_push("a credential pasted as a label")
    status = wait_for(lambda: (s := get_json(running.base, "/status"))["head"]["revision"] == bad and s,
                      what="the invalid head")
    problems = status["head"]["problems"]
    assert any("connectors/orders.yaml:" in p and "'sk_l…' (31 characters, not shown) is not a valid label value"
               in p for p in problems), problems
    wait_for(lambda: alert_receiver.received, what="the sync_failed alert")
    everything = running.logs.getvalue() + str(status) + str(alert_receiver.received)
    assert SECRET_LABEL not in everything
    assert SECRET_LABEL[:12] not in everything, "no more than a short prefix"
