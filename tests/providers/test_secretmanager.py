"""Secrets: existence checks through the official Secret Manager client (REST transport, a local
endpoint: tests/fake_cloudrun.py), and the local stand-in. Nothing here, or in the module under
test, ever reads a secret's value from Secret Manager.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from fake_cloudrun import FakeSecretManager

import providers.secretmanager as secretmanager_module
from providers.base import SecretStore
from providers.errors import NotFound, PermanentError
from providers.secretmanager import LocalSecrets, SecretManagerSecrets, local_secrets_dir


@pytest.fixture
def fake():
    server = FakeSecretManager()
    yield server
    server.close()


def test_missing_is_one_paged_list_of_metadata(fake):
    fake.secrets = [f"projects/123456789012/secrets/{name}" for name in
                    ("payments-api-key", "stripe-signing-key", "orders-token", "a", "b")]
    fake.secrets.append("projects/other/secrets/elsewhere")  # another project's: never listed here
    fake.page_size = 2
    store = SecretManagerSecrets("123456789012", **fake.client_kwargs())
    assert isinstance(store, SecretStore)

    assert store.missing(["payments-api-key", "stripe-signing-key", "gone", "elsewhere"]) == {"gone", "elsewhere"}

    assert [(r.method, r.path, r.query.get("pageToken")) for r in fake.requests] == [
        ("GET", "/v1/projects/123456789012/secrets", None),
        ("GET", "/v1/projects/123456789012/secrets", "2"),
        ("GET", "/v1/projects/123456789012/secrets", "4"),
    ], "one list call (three pages); no get, no version, no :access"
    assert store.api_calls() == {"secretmanager.list_secrets": 3}


def test_no_ids_no_call(fake):
    store = SecretManagerSecrets("p", **fake.client_kwargs())
    assert store.missing([]) == set()
    assert fake.requests == []


def test_the_module_never_reads_a_secret_value():
    """No call of anything that returns a payload: ``access_secret_version`` (or any ``access*``)."""
    tree = ast.parse(Path(secretmanager_module.__file__).read_text())
    called = {node.func.attr for node in ast.walk(tree)
              if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)}
    assert "list_secrets" in called
    assert not {name for name in called if name.startswith("access") or "version" in name}


# --------------------------------------------------------------------------- local stand-in


def test_local_secrets_are_files(tmp_path):
    store = LocalSecrets(tmp_path)
    assert isinstance(store, SecretStore)
    (tmp_path / "payments-api-key").write_text("tok-123\n")  # as `echo tok-123 > file` writes it
    assert store.missing(["payments-api-key", "stripe-signing-key", "../etc/passwd"]) == {
        "stripe-signing-key", "../etc/passwd"}
    assert store.value("payments-api-key") == "tok-123"
    with pytest.raises(NotFound) as missing:
        store.value("stripe-signing-key")
    assert "stripe-signing-key" in str(missing.value) and str(tmp_path / "stripe-signing-key") in str(missing.value)
    with pytest.raises(PermanentError, match="is not a secret id"):
        store.value("../payments-api-key")


def test_the_local_directory_defaults_under_the_state_dir(tmp_path, monkeypatch):
    assert local_secrets_dir(tmp_path, {}) == tmp_path / "secrets"
    assert local_secrets_dir(tmp_path, {"HEADWATER_SECRETS_DIR": "/run/secrets"}) == Path("/run/secrets")
    monkeypatch.delenv("HEADWATER_SECRETS_DIR", raising=False)
    assert LocalSecrets.for_state_dir(tmp_path).directory == tmp_path / "secrets"
    monkeypatch.setenv("HEADWATER_SECRETS_DIR", str(tmp_path / "elsewhere"))
    assert LocalSecrets.for_state_dir(tmp_path).directory == tmp_path / "elsewhere"
