"""The desired-state repository, as the daemon sees it: a branch that moves.

`GitSource` clones the repository once into a cache directory, then fetches the tracked branch
(on the poll interval, and at once on a push webhook) and checks out a given commit, detached,
to load the desired state from it. Revisions are always full commit SHAs.

Credentials come from the environment, never from flags or the URL:

* a token (``HEADWATER_GIT_TOKEN``) for HTTPS remotes is handed to git as an
  ``http.<remote>.extraHeader`` through ``GIT_CONFIG_*`` environment variables of the git
  process, so it appears neither in the command line (visible in ``ps``), nor in
  ``.git/config``, nor in the URL; scoped to the remote's URL, git sends it to that remote only
  (not to another host a redirect or a submodule points at);
* credentials written into the URL (``https://user:token@host/repo.git``) are taken out of it
  before git ever sees the URL, and handed over the same way: the clone's ``.git/config`` and
  every git command line hold the bare URL;
* a token is never sent over plain ``http://``, except to a loopback host (a local test
  server): such a remote is refused (`GitSourceError`) before anything is sent;
* an SSH private key path (``HEADWATER_GIT_SSH_KEY``) goes into ``GIT_SSH_COMMAND``, with
  ``HEADWATER_GIT_KNOWN_HOSTS`` to pin host keys (without it, a host key is trusted on first use).

Prompts are disabled (``GIT_TERMINAL_PROMPT=0``): bad credentials fail fast instead of hanging.
Every error message and URL that leaves this module goes through the redactor, which masks the
token and any ``user:password@`` in URLs.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import shlex
import shutil
import urllib.parse
from collections.abc import Mapping
from pathlib import Path

import git

from reconciler.daemon.logs import Redactor

GIT_TIMEOUT_S = 120  # a fetch that takes longer is killed and retried on the next poll


class GitSourceError(Exception):
    """Clone, fetch or checkout failed; the message is redacted."""


class GitSource:
    def __init__(
        self,
        url: str,
        branch: str,
        cache_dir: Path,
        *,
        token: str | None = None,
        ssh_key: str | None = None,
        known_hosts: str | None = None,
        redactor: Redactor | None = None,
    ) -> None:
        self.redact = redactor or Redactor([token])
        self.redact.add(token)
        # A local path is made absolute: git records it so in the clone, and restarts compare them.
        url = str(Path(url).resolve()) if "://" not in url and Path(url).exists() else url
        # Credentials in the URL leave it here: git only ever sees the bare URL.
        url, user, url_secret = split_credentials(url)
        self.redact.add(url_secret)
        token = token or url_secret
        self.url = url
        self.branch = branch
        if token and insecure_remote(url):
            raise GitSourceError(self.redact(
                f"refusing to send the git token to {url} over plain http:// (only loopback hosts may use "
                "http://); use an https:// URL"))
        # One work tree per (remote, branch); the key uses the bare URL, so no secret lands in a
        # directory name.
        key = hashlib.sha256(f"{self.redact(self.url)}#{branch}".encode()).hexdigest()[:16]
        self.workdir = Path(cache_dir) / key
        self._env = _git_env(token, ssh_key, known_hosts, remote=url if "://" in url else None, user=user)
        if token:  # the encoded token, too
            self.redact.add(self._env["GIT_CONFIG_VALUE_0"].rsplit(" ", 1)[-1])
        self._repo: git.Repo | None = None

    @property
    def display_url(self) -> str:
        return self.redact(self.url)

    def fetch(self) -> str:
        """Bring the tracked branch up to date; its head as a full SHA."""
        try:
            repo = self._open()
            repo.git.fetch("--prune", "--no-tags", "origin",
                           f"+refs/heads/{self.branch}:refs/remotes/origin/{self.branch}",
                           env=self._env, kill_after_timeout=GIT_TIMEOUT_S)
            return repo.commit(f"refs/remotes/origin/{self.branch}").hexsha
        except (git.GitError, ValueError, OSError) as exc:
            raise GitSourceError(self._message("fetch", exc)) from None

    def checkout(self, sha: str) -> Path:
        """Check ``sha`` out (detached, clean) and return the work tree's root."""
        try:
            repo = self._open()
            repo.git.checkout("--force", "--detach", sha)
            repo.git.clean("-ffdx")
            return Path(repo.working_tree_dir)
        except (git.GitError, ValueError, OSError) as exc:
            raise GitSourceError(self._message("checkout", exc)) from None

    def changed_files(self, old: str, new: str) -> set[str] | None:
        """Paths (from the work tree's root) that differ between commits ``old`` and ``new``,
        a rename as its two paths; None when git cannot tell (``old`` gone after a force-push)."""
        try:
            out = self._open().git.diff("--name-only", "--no-renames", "-z", old, new, "--")
        except (git.GitError, ValueError, OSError):
            return None
        return {path for path in out.split("\0") if path}

    def first_parents(self, sha: str, limit: int) -> list[str]:
        """``sha`` and its first-parent ancestors, newest first (at most ``limit``)."""
        try:
            out = self._open().git.rev_list("--first-parent", f"--max-count={limit}", sha)
        except (git.GitError, ValueError, OSError) as exc:
            raise GitSourceError(self._message("rev-list", exc)) from None
        return out.split()

    # ---------------------------------------------------------------------------------------

    def _open(self) -> git.Repo:
        if self._repo is not None:
            return self._repo
        if (self.workdir / ".git").is_dir():
            try:
                repo = git.Repo(self.workdir)
                if repo.remotes.origin.url == self.url:
                    self._repo = repo
                    return repo
            except (git.GitError, AttributeError, ValueError):
                pass
            shutil.rmtree(self.workdir)  # not ours or broken: start over
        self.workdir.parent.mkdir(parents=True, exist_ok=True)
        self._repo = git.Repo.clone_from(
            self.url, self.workdir, env=self._env, branch=self.branch, single_branch=True,
        )
        return self._repo

    def _message(self, step: str, exc: BaseException) -> str:
        if isinstance(exc, git.GitCommandError):
            detail = (exc.stderr or "").strip() or f"exit status {exc.status}"
        else:
            detail = str(exc)
        detail = " ".join(detail.split())[:500]
        return self.redact(f"git {step} of {self.url} (branch {self.branch}) failed: {detail}")


def split_credentials(url: str) -> tuple[str, str | None, str | None]:
    """``url`` without its user info, the user name, and the secret (password, or a lone token).

    ``https://x-access-token:T@host/r.git`` → (``https://host/r.git``, ``x-access-token``, ``T``);
    ``https://T@host/r.git`` → (``https://host/r.git``, None, ``T``). SSH URLs keep their user
    (``ssh://git@host/r``: a user name, not a secret); paths and scp-like URLs are left alone.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or "@" not in parts.netloc:
        return url, None, None
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, colon, password = userinfo.partition(":")
    user, password = urllib.parse.unquote(user), urllib.parse.unquote(password)
    bare = urllib.parse.urlunsplit(parts._replace(netloc=hostport))
    if colon:
        return bare, user or None, password or None
    return bare, None, user or None


def insecure_remote(url: str) -> bool:
    """Plain ``http://`` to a host that is not loopback: credentials must never go there."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http":
        return False
    host = (parts.hostname or "").strip("[]")
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True


def _git_env(token: str | None, ssh_key: str | None, known_hosts: str | None, *, remote: str | None = None,
             user: str | None = None) -> Mapping[str, str]:
    env = {"GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "true"}
    if token:
        # GitHub (and most hosts) accept any user name with a token as the password.
        basic = base64.b64encode(f"{user or 'x-access-token'}:{token}".encode()).decode()
        # Scoped to the remote (git matches http.<url>.* by URL prefix): never sent elsewhere.
        key = f"http.{remote}.extraHeader" if remote else "http.extraHeader"
        env |= {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": key,
                "GIT_CONFIG_VALUE_0": f"Authorization: Basic {basic}"}
    if ssh_key:
        options = ["-i", ssh_key, "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"]
        if known_hosts:
            options += ["-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=yes"]
        else:
            options += ["-o", "StrictHostKeyChecking=accept-new"]
        env["GIT_SSH_COMMAND"] = "ssh " + " ".join(shlex.quote(o) for o in options)
    return env
