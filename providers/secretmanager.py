"""Secrets: which of the secrets a platform references exist, never what they hold.

Connectors authenticate to their APIs (and webhooks check signatures) with secrets that live in
Secret Manager; a ``cloud_run_service`` spec names them by id (``secrets: {env var: secret id}``)
and Cloud Run mounts them itself (docs/connector-contract.md). headwater only needs to know
whether they *exist*, to say so before a deploy fails on a missing one. That is the optional
ability `providers.base.SecretStore`: ``missing(secret_ids) -> set[str]``.

Two implementations:

* `SecretManagerSecrets` (GCP): ONE ``list_secrets`` call per check for the whole project
  (paged, at most 25,000 secrets a page), whatever the number of ids asked about. Listing returns
  metadata only (names, labels, replication); it needs ``secretmanager.secrets.list``
  (``roles/secretmanager.viewer``), not the accessor role. Nothing in this module reads a secret
  version: the values stay between Secret Manager and Cloud Run.
* `LocalSecrets` (EMULATOR DEPARTURE: there is no Secret Manager emulator): a secret is the file
  ``<directory>/<secret id>``, the directory being ``$HEADWATER_SECRETS_DIR`` or
  ``<state dir>/secrets`` (`local_secrets_dir`). Its ``value`` is for the local runner alone,
  which hands it to a connector process through its environment, as Cloud Run does.

Secret ids follow Secret Manager's rule, ``[A-Za-z0-9_-]{1,255}``: anything else cannot exist
(it is reported missing), and cannot name a file outside the directory.

Verified here against a local HTTP endpoint through the official client (REST transport).
Verified only against the real service: the permission a list needs.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from providers.calls import CallCounter
from providers.errors import NotFound, PermanentError, call

SECRETS_DIR_ENV = "HEADWATER_SECRETS_DIR"
SECRETS_SUBDIR = "secrets"
LIST_PAGE_SIZE = 25_000  # the service's maximum
RPC_TIMEOUT_S = 60.0

_SECRET_ID = re.compile(r"^[A-Za-z0-9_-]{1,255}$")


def valid_secret_id(secret_id: str) -> bool:
    """Secret Manager's id rule: letters, digits, ``-`` and ``_``, 1 to 255 characters."""
    return bool(_SECRET_ID.match(secret_id))


class SecretManagerSecrets:
    """Existence of the project's Secret Manager secrets (metadata only). `providers.base.SecretStore`."""

    def __init__(self, project: str, *, client: Any = None, client_options: Any = None, credentials: Any = None,
                 transport: str | None = None) -> None:
        self.project = project
        self._client = client
        # For tests: point the official client at a local endpoint (REST transport).
        self._client_kwargs = {k: v for k, v in (("client_options", client_options), ("credentials", credentials),
                                                 ("transport", transport)) if v is not None}
        self._lock = threading.Lock()
        self._counter = CallCounter("secretmanager")

    @property
    def location(self) -> str:
        """Where a missing secret was looked for, for the plan's error."""
        return f"Secret Manager (project {self.project})"

    def missing(self, secret_ids: Collection[str]) -> set[str]:
        """The ids among ``secret_ids`` with no secret in the project. One paged list call (none
        when ``secret_ids`` is empty). Errors: `providers.errors` (e.g. PermanentError on 403)."""
        wanted = set(secret_ids)
        if not wanted:
            return set()
        return wanted - self.existing()

    def existing(self) -> set[str]:
        """The ids of every secret in the project."""
        # Imported here: the local runner uses LocalSecrets without loading the client library.
        from google.cloud import secretmanager

        request = secretmanager.ListSecretsRequest(parent=f"projects/{self.project}", page_size=LIST_PAGE_SIZE)

        def attempt() -> set[str]:
            self._counter.count("list_secrets")
            pager = self._secrets_client().list_secrets(request=request, retry=None, timeout=RPC_TIMEOUT_S)
            found: set[str] = set()
            for number, page in enumerate(pager.pages):
                if number:
                    self._counter.count("list_secrets")
                # projects/<number>/secrets/<id>: the id is all we compare.
                found.update(secret.name.rsplit("/", 1)[-1] for secret in page.secrets)
            return found

        return call(attempt, f"secretmanager.list_secrets projects/{self.project}")

    # -- ApiCallCounter --

    def api_calls(self) -> Mapping[str, int]:
        return self._counter.snapshot()

    def _secrets_client(self) -> Any:
        with self._lock:
            if self._client is None:
                from google.cloud import secretmanager

                self._client = secretmanager.SecretManagerServiceClient(**self._client_kwargs)
            return self._client


def local_secrets_dir(state_dir: Path | str, environ: Mapping[str, str] | None = None) -> Path:
    """``$HEADWATER_SECRETS_DIR`` if set, else ``<state_dir>/secrets``."""
    env = os.environ if environ is None else environ
    return Path(env.get(SECRETS_DIR_ENV) or Path(state_dir) / SECRETS_SUBDIR)


class LocalSecrets:
    """Secrets as files, ``<directory>/<secret id>`` (EMULATOR DEPARTURE; module docstring).
    `providers.base.SecretStore`, plus ``value`` for the local runner."""

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)

    @property
    def location(self) -> str:
        """Where a missing secret was looked for, for the plan's error."""
        return f"the local secrets directory {self.directory.resolve()} (a file per secret id)"

    @classmethod
    def for_state_dir(cls, state_dir: Path | str) -> LocalSecrets:
        return cls(local_secrets_dir(state_dir))

    def path(self, secret_id: str) -> Path:
        """Where the secret ``secret_id`` is expected. PermanentError for an id that is not one."""
        if not valid_secret_id(secret_id):
            raise PermanentError(f"{secret_id!r} is not a secret id (letters, digits, - and _, at most 255)")
        return self.directory / secret_id

    def missing(self, secret_ids: Collection[str]) -> set[str]:
        """The ids among ``secret_ids`` with no file (invalid ids included)."""
        return {s for s in secret_ids if not valid_secret_id(s) or not (self.directory / s).is_file()}

    def value(self, secret_id: str) -> str:
        """The secret's value: the file's text (UTF-8) without trailing line breaks, so that
        ``echo token > file`` works. NotFound (a PermanentError) names the id and the path
        expected, never a value."""
        path = self.path(secret_id)
        try:
            return path.read_text(encoding="utf-8").rstrip("\r\n")
        except FileNotFoundError:
            raise NotFound(f"secret {secret_id!r} is missing: create the file {path} "
                           f"(local secrets live in ${SECRETS_DIR_ENV} or <state dir>/{SECRETS_SUBDIR})") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise PermanentError(f"secret {secret_id!r}: cannot read {path}: {type(exc).__name__}") from None
