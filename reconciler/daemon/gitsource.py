"""The desired-state repository, as the daemon sees it: a branch that moves.

`GitSource` clones the repository once into a cache directory, then fetches the tracked branch
(on the poll interval, and at once on a push webhook) and checks out a given commit, detached,
to load the desired state from it. Revisions are always full commit SHAs.

Credentials come from the environment, never from flags or the URL:

* a token (``HEADWATER_GIT_TOKEN``) for HTTPS remotes is handed to git as an
  ``http.extraHeader`` through ``GIT_CONFIG_*`` environment variables of the git process, so it
  appears neither in the command line (visible in ``ps``), nor in ``.git/config``, nor in the URL;
* an SSH private key path (``HEADWATER_GIT_SSH_KEY``) goes into ``GIT_SSH_COMMAND``, with
  ``HEADWATER_GIT_KNOWN_HOSTS`` to pin host keys (without it, a host key is trusted on first use).

Prompts are disabled (``GIT_TERMINAL_PROMPT=0``): bad credentials fail fast instead of hanging.
Every error message and URL that leaves this module goes through the redactor, which masks the
token and any ``user:password@`` in URLs.
"""

from __future__ import annotations

import base64
import hashlib
import shlex
import shutil
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
        # A local path is made absolute: git records it so in the clone, and restarts compare them.
        self.url = str(Path(url).resolve()) if "://" not in url and Path(url).exists() else url
        self.branch = branch
        self.redact = redactor or Redactor([token])
        self.redact.add(token)
        # One work tree per (remote, branch); the key uses the redacted URL, so no secret lands
        # in a directory name.
        key = hashlib.sha256(f"{self.redact(self.url)}#{branch}".encode()).hexdigest()[:16]
        self.workdir = Path(cache_dir) / key
        self._env = _git_env(token, ssh_key, known_hosts)
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


def _git_env(token: str | None, ssh_key: str | None, known_hosts: str | None) -> Mapping[str, str]:
    env = {"GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "true"}
    if token:
        # GitHub (and most hosts) accept any user name with a token as the password.
        basic = base64.b64encode(f"x-access-token:{token}".encode()).decode()
        env |= {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "http.extraHeader",
                "GIT_CONFIG_VALUE_0": f"Authorization: Basic {basic}"}
    if ssh_key:
        options = ["-i", ssh_key, "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"]
        if known_hosts:
            options += ["-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=yes"]
        else:
            options += ["-o", "StrictHostKeyChecking=accept-new"]
        env["GIT_SSH_COMMAND"] = "ssh " + " ".join(shlex.quote(o) for o in options)
    return env
