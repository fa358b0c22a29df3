"""What a hostile or careless commit can put in a desired-state repo (issue 9, kinds 11 and 12).

Every file headwater reads must resolve inside the repository, be a regular file and be read
with a byte bound; every parser is bounded; BigQuery's limits on a table's schema and Cloud
Scheduler's cron syntax are checked at validate. Each case is a broken repo: the problem is
reported with its file, line and field, and `headwater apply` fails before the first API call
(an in-memory provider counts calls), without a traceback and without reading what it must not.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import pytest
from helpers import copy_example, edit_yaml

from providers.memory import MemoryProvider
from reconciler import cli
from reconciler.engine import Engine
from reconciler.load import InvalidDesiredState, load_repo

# A YAML file on the daemon's host, outside any repository, whose key names must never surface.
HOST_FILE = "host_only_key: 1\nsource_id: stolen\nanother_private_key_name: 2\n"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return copy_example(tmp_path)


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory beside the repository (on the host, not in it)."""
    directory = tmp_path / "host"
    directory.mkdir()
    (directory / "config.yaml").write_text(HOST_FILE)
    (directory / "platform.yaml").write_text((Path("desired_state") / "platform.yaml").read_text())
    return directory


def link(repo: Path, relative: str, target: str | Path) -> None:
    path = repo / relative
    if path.exists() or path.is_symlink():
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, path)


def schema_fields(relative: str, extra: list[dict]):
    def mutate(repo: Path, _outside: Path) -> None:
        path = repo / relative
        data = json.loads(path.read_text())
        data["fields"].extend(extra)
        path.write_text(json.dumps(data))

    return mutate


def nested_record(levels: int) -> dict:
    """A RECORD field nesting ``levels`` RECORDs (the innermost holding one STRING)."""
    field: dict = {"name": "leaf", "type": "STRING"}
    for level in range(levels, 0, -1):
        field = {"name": f"r{level}", "type": "RECORD", "fields": [field]}
    return field


def set_schedule(value: str):
    def mutate(repo: Path, _outside: Path) -> None:
        edit_yaml(repo / "connectors/orders.yaml", lambda d: d["ingestion"].update(schedule=value))

    return mutate


CLICKSTREAM_COLUMNS = 8  # 6 top-level fields + page.url, page.referrer

CASES = [
    # (id, mutation(repo, outside), expected "file:line:col" prefix, expected message fragment)
    # -- kind 11: files that are not regular files inside the repo
    ("connector-symlink-to-etc-passwd", lambda r, o: link(r, "connectors/x.yaml", "/etc/passwd"),
     "connectors/x.yaml:1:1", "is a symbolic link to '/etc/passwd', outside the repository"),
    ("connector-symlink-to-a-yaml-file-on-the-host", lambda r, o: link(r, "connectors/stolen.yaml", o / "config.yaml"),
     "connectors/stolen.yaml:1:1", "outside the repository; headwater reads only regular files inside it"),
    ("platform-symlink-out-of-the-repo", lambda r, o: link(r, "platform.yaml", o / "platform.yaml"),
     "platform.yaml:1:1", "outside the repository"),
    ("schema-symlink-to-dev-zero", lambda r, o: link(r, "schemas/orders.json", "/dev/zero"),
     "schemas/orders.json:1:1", "is a symbolic link to '/dev/zero', outside the repository"),
    ("connector-symlink-to-proc-self-fd", lambda r, o: link(r, "connectors/fd.yaml", "/proc/self/fd/1"),
     "connectors/fd.yaml:1:1", "outside the repository"),
    ("connectors-directory-linked-out-of-the-repo", lambda r, o: (shutil.rmtree(r / "connectors"), link(r, "connectors", o)),
     "connectors/config.yaml:1:1", "is behind a symbolic link, outside the repository"),
    ("connector-fifo", lambda r, o: os.mkfifo(r / "connectors/pipe.yaml"),
     "connectors/pipe.yaml:1:1", "is a FIFO (named pipe), not a regular file; not read"),
    ("platform-fifo", lambda r, o: ((r / "platform.yaml").unlink(), os.mkfifo(r / "platform.yaml")),
     "platform.yaml:1:1", "is a FIFO (named pipe), not a regular file"),
    ("schema-fifo", lambda r, o: ((r / "schemas/orders.json").unlink(), os.mkfifo(r / "schemas/orders.json")),
     "schemas/orders.json:1:1", "is a FIFO (named pipe), not a regular file"),
    ("connector-is-a-directory", lambda r, o: (r / "connectors/dir.yaml").mkdir(),
     "connectors/dir.yaml:1:1", "is a directory, not a regular file"),
    ("dangling-symlink", lambda r, o: link(r, "connectors/gone.yaml", "nowhere.yaml"),
     "connectors/gone.yaml:1:1", "is a symbolic link to 'nowhere.yaml', which does not exist"),
    ("symlink-loop", lambda r, o: link(r, "connectors/loop.yaml", "loop.yaml"),
     "connectors/loop.yaml:1:1", "is a symbolic link loop"),
    # -- kind 12: bounded parsers
    ("json-nested-10000-levels",
     lambda r, o: (r / "schemas/orders.json").write_text('{"source_id": "orders", "fields": '
                                                         + "[" * 10_000 + "]" * 10_000 + "}"),
     "schemas/orders.json:1:", "nested more than 64 levels deep; not loaded"),
    ("yaml-nested-10000-levels",
     lambda r, o: (r / "connectors/deep.yaml").write_text("source_id: deep\nx: " + "[" * 10_000 + "]" * 10_000),
     "connectors/deep.yaml:2:", "nested more than 64 levels deep; not loaded"),
    ("yaml-nested-block-style-100-levels",
     lambda r, o: (r / "connectors/deep.yaml").write_text(
         "source_id: deep\n" + "".join("  " * i + f"k{i}:\n" for i in range(100)) + "  " * 100 + "v: 1\n"),
     "connectors/deep.yaml:", "nested more than 64 levels deep; not loaded"),
    ("yaml-integer-of-5000-digits",
     lambda r, o: (r / "connectors/big.yaml").write_text("source_id: big\nversion: " + "9" * 5000 + "\n"),
     "connectors/big.yaml:2:10", "invalid int value: Exceeds the limit (4300 digits)"),
    ("json-integer-of-5000-digits",
     lambda r, o: (r / "schemas/orders.json").write_text('{"source_id": ' + "9" * 5000 + "}"),
     "schemas/orders.json:1:1", "invalid JSON: Exceeds the limit (4300 digits)"),
    ("yaml-impossible-timestamp",
     lambda r, o: (r / "connectors/when.yaml").write_text("source_id: when\nat: 2026-99-01\n"),
     "connectors/when.yaml:2:5", "invalid timestamp value: month must be in 1..12"),
    # -- kind 12: BigQuery's limits on the Silver table (its columns include headwater's 3)
    ("schema-10000-fields",
     schema_fields("schemas/clickstream.json", [{"name": f"c{i}", "type": "STRING"} for i in range(9_992)]),
     "schemas/clickstream.json:", "fields: 10000 columns (nested ones included) plus headwater's 3 metadata columns "
     "(_ingested_at, _message_id, _schema_version) make 10003; a BigQuery table allows 10000: at most 9997 of its own"),
    ("schema-one-column-over-with-headwaters-own",
     schema_fields("schemas/clickstream.json",
                   [{"name": f"c{i}", "type": "STRING"} for i in range(10_000 - 3 - CLICKSTREAM_COLUMNS + 1)]),
     "schemas/clickstream.json:", "make 10001; a BigQuery table allows 10000"),
    ("schema-record-nested-16-levels", schema_fields("schemas/clickstream.json", [nested_record(16)]),
     "schemas/clickstream.json:", "RECORD 'r16' makes 16 levels of nested RECORDs; BigQuery allows 15"),
    # -- kind 12: cron as Cloud Scheduler takes it
    ("cron-arabic-indic-digit", set_schedule("١ 3 * * *"),
     "connectors/orders.yaml:", "'١' (U+0661) is not allowed; cron takes ASCII digits 0-9"),
    ("cron-fullwidth-digit", set_schedule("0 ３ * * *"),
     "connectors/orders.yaml:", "'３' (U+FF13) is not allowed"),
    ("cron-hour-out-of-range", set_schedule("0 24 * * *"),
     "connectors/orders.yaml:", "ingestion.schedule: '0 24 * * *' is not a valid cron expression: hour field '24': "
     "24 is outside 0-23"),
    ("cron-seconds-field", set_schedule("0 0 3 * * *"),
     "connectors/orders.yaml:", "expected 5 fields (minute hour day month weekday)"),
    ("cron-macro", set_schedule("@daily"),
     "connectors/orders.yaml:", "macros such as @daily are not accepted by Cloud Scheduler"),
    ("cron-quartz-last-day", set_schedule("0 3 L * *"),
     "connectors/orders.yaml:", "day of month field 'L': 'L' (last) is a croniter/Quartz extension that Cloud "
     "Scheduler does not accept"),
    ("cron-nth-weekday", set_schedule("0 3 * * 1#2"),
     "connectors/orders.yaml:", "day of week field '1#2': '#' (nth weekday)"),
    ("cron-backwards-day-names", set_schedule("0 3 * * fri-mon"),
     "connectors/orders.yaml:", "day of week field 'fri-mon': range 'fri-mon' is backwards"),
    ("cron-bad-month-name", set_schedule("0 3 * foo *"),
     "connectors/orders.yaml:", "month field 'foo': 'foo' is not a month name (jan-dec)"),
    ("cron-zero-step", set_schedule("*/0 3 * * *"),
     "connectors/orders.yaml:", "minute field '*/0': bad step '0'"),
    ("cron-never-fires", set_schedule("0 3 30 2 *"),
     "connectors/orders.yaml:", "its day of month and month never meet (e.g. 30 February)"),
]


def _apply_touches_nothing(repo: Path, monkeypatch, capsys, message: str) -> str:
    provider = MemoryProvider()
    monkeypatch.setattr(cli, "_engine", lambda state, args=None: Engine([provider]))
    assert cli.main(["apply", "--repo", str(repo), "--auto-approve"]) == 1
    assert provider.calls == {}, "validation must fail before any API call"
    assert provider.objects == {}
    err = capsys.readouterr().err
    assert message in err and "nothing was changed" in err
    assert "Traceback" not in err
    return err


def _within(seconds: float, fn):
    """Run ``fn`` on a thread; fail (instead of hanging the suite) if it takes longer."""
    result: dict = {}

    def run():
        try:
            result["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s (blocked on a file?)"
    if "error" in result:
        raise result["error"]
    return result.get("value")


@pytest.mark.parametrize(("mutate", "where", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_files_are_refused_with_position_and_nothing_is_touched(repo, outside, mutate, where, message,
                                                                          monkeypatch, capsys):
    mutate(repo, outside)

    def load():
        with pytest.raises(InvalidDesiredState) as raised:
            load_repo(repo)
        return [str(p) for p in raised.value.problems]

    lines = _within(20, load)
    assert any(line.startswith(where) and message in line for line in lines), lines
    err = _within(20, lambda: _apply_touches_nothing(repo, monkeypatch, capsys, message))
    for private in ("host_only_key", "another_private_key_name", "root:x:0:0"):
        assert private not in err, "nothing from outside the repository is read, let alone shown"


def test_a_symlink_that_stays_inside_the_repository_is_read(repo):
    shared = repo / "shared"
    shared.mkdir()
    (repo / "schemas/orders.json").rename(shared / "orders.json")
    link(repo, "schemas/orders.json", "../shared/orders.json")
    assert "orders" in load_repo(repo).source_ids


def test_the_daemon_boundary_is_the_checkout_not_the_subdirectory(tmp_path):
    checkout = tmp_path / "checkout"
    repo = copy_example(checkout)  # checkout/repo: the desired state in a subdirectory
    (checkout / "common").mkdir()
    (repo / "schemas/orders.json").rename(checkout / "common/orders.json")
    link(repo, "schemas/orders.json", "../../common/orders.json")
    with pytest.raises(InvalidDesiredState, match="outside the repository"):
        load_repo(repo)  # by default the desired-state directory is the boundary
    assert "orders" in load_repo(repo, within=checkout).source_ids


def test_a_desired_state_directory_linked_out_of_the_checkout_is_refused(tmp_path, outside):
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    os.symlink(copy_example(tmp_path / "elsewhere"), checkout / "platform")
    with pytest.raises(InvalidDesiredState, match="resolves outside the repository"):
        load_repo(checkout / "platform", within=checkout)


@pytest.mark.parametrize(("fields", "valid"), [
    pytest.param(10_000 - 3 - CLICKSTREAM_COLUMNS, True, id="exactly-10000-columns-with-headwaters-3"),
    pytest.param(10_000 - 3 - CLICKSTREAM_COLUMNS + 1, False, id="one-more"),
])
def test_the_column_limit_counts_headwaters_metadata_columns(repo, fields, valid):
    schema_fields("schemas/clickstream.json", [{"name": f"c{i}", "type": "STRING"} for i in range(fields)])(repo, None)
    if valid:
        assert "clickstream" in load_repo(repo).source_ids
    else:
        with pytest.raises(InvalidDesiredState, match="a BigQuery table allows 10000"):
            load_repo(repo)


def test_fifteen_record_levels_are_allowed(repo):
    schema_fields("schemas/clickstream.json", [nested_record(15)])(repo, None)
    assert "clickstream" in load_repo(repo).source_ids


def test_a_file_that_grows_past_the_limit_while_read_is_cut_off(tmp_path, monkeypatch):
    """The size from stat is not trusted: the read itself stops one byte past the limit."""
    from reconciler import yamlsrc

    path = tmp_path / "x.yaml"
    path.write_text("a: 1\n")
    monkeypatch.setattr(yamlsrc, "MAX_FILE_BYTES", 3)  # the file "grew": its stat said 5 > 3 ...
    real_fstat = os.fstat
    monkeypatch.setattr(yamlsrc.os, "fstat", lambda fd: os.stat_result((*real_fstat(fd)[:6], 0, *real_fstat(fd)[7:])))
    with pytest.raises(yamlsrc.LoadError, match="over the 3-byte limit"):  # ... but claimed 0 bytes
        yamlsrc.load_yaml(path)


# --------------------------------------------------------------------------- one run, every problem


def test_a_schemas_wrong_source_id_does_not_hide_the_connectors_other_errors(repo):
    path = repo / "schemas/orders.json"
    path.write_text(path.read_text().replace('"source_id": "orders"', '"source_id": "invoices"'))

    def break_connector(data):
        data["processing"]["bronze_to_silver"][0]["deduplication"]["key"] = ["order_idd"]
        data["silver"]["cluster_by"] = ["shop"]

    edit_yaml(repo / "connectors/orders.yaml", break_connector)
    edit_yaml(repo / "connectors/payments.yaml", lambda d: d["ingestion"].update(poll_interval="5s"))
    with pytest.raises(InvalidDesiredState) as raised:
        load_repo(repo)
    messages = [f"{p.file}: {p.message}" for p in raised.value.problems]
    expected = [
        "schemas/orders.json: schema source_id 'invoices' does not match connector 'orders'",
        "connectors/orders.yaml: deduplication key 'order_idd' is not a field of schemas/orders.json",
        "connectors/orders.yaml: cluster field 'shop' is not a field of schemas/orders.json",
        "connectors/payments.yaml: poll_interval 5s is under the minimum of 10s",
    ]
    for fragment in expected:
        assert any(fragment in m for m in messages), (fragment, messages)


def test_a_duplicate_source_id_is_still_checked_as_far_as_it_can_be(repo):
    copy = (repo / "connectors/orders.yaml").read_text().replace("schemas/orders.json", "schemas/orders_copy.json")
    (repo / "connectors/orders_copy.yaml").write_text(copy)
    (repo / "schemas/orders_copy.json").write_text(
        (repo / "schemas/orders.json").read_text().replace('"order_id"', '"order_ref"'))
    with pytest.raises(InvalidDesiredState) as raised:
        load_repo(repo)
    messages = [str(p) for p in raised.value.problems]
    assert any("duplicate source_id 'orders'" in m for m in messages)
    assert any("deduplication key 'order_id' is not a field of schemas/orders_copy.json" in m for m in messages)


# --------------------------------------------------------------------------- the repo path itself


@pytest.mark.parametrize(("make", "message"), [
    pytest.param(lambda tmp: tmp / "no-such-dir", "the desired-state directory does not exist", id="missing"),
    pytest.param(lambda tmp: (tmp / "a-file").write_text("x") and tmp / "a-file",
                 "the desired-state directory is a file, not a directory", id="a-file"),
])
@pytest.mark.parametrize("command", ["validate", "plan", "apply", "drift"])
def test_a_repo_path_that_is_not_a_directory_is_named_in_one_error_line(tmp_path, make, message, command,
                                                                         monkeypatch, capsys):
    path = make(tmp_path)
    provider = MemoryProvider()
    monkeypatch.setattr(cli, "_engine", lambda state, args=None: Engine([provider]))
    assert cli.main([command, "--repo", str(path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"error: {path}: {message}; --repo names a directory with platform.yaml and connectors/ at its root"
    assert provider.calls == {}


# --------------------------------------------------------------------------- the pull-request dry run's base side


def test_the_base_revision_of_a_pr_is_read_under_the_same_rules(tmp_path):
    """`plan --base` exports the base commit to compare with: a symbolic link stays one (and is
    refused as outside the repository), a blob over the limit is refused unread."""
    import git

    from reconciler import pr

    repo = copy_example(tmp_path)
    work = git.Repo.init(repo, initial_branch="main")
    with work.config_writer() as config:
        config.set_value("user", "name", "t")
        config.set_value("user", "email", "t@example.com")
    link(repo, "connectors/x.yaml", "/etc/passwd")
    (repo / "connectors/huge.yaml").write_text("#" * (2 * 1024 * 1024))
    work.git.add("-A")
    work.index.commit("base with hostile files")
    work.git.checkout("-b", "feature")
    (repo / "connectors/x.yaml").unlink()
    (repo / "connectors/huge.yaml").unlink()
    work.git.add("-A")
    work.index.commit("feature")

    exported = tmp_path / "exported"
    assert pr._export(work.commit("main"), Path("."), exported)
    assert os.readlink(exported / "connectors/x.yaml") == "/etc/passwd"
    with pytest.raises(InvalidDesiredState) as raised:
        load_repo(exported)
    messages = [str(p) for p in raised.value.problems]
    assert "connectors/x.yaml:1:1: is a symbolic link to '/etc/passwd', outside the repository; headwater reads " \
           "only regular files inside it" in messages
    assert "connectors/huge.yaml:1:1: file is 2097152 bytes, over the 1048576-byte limit; not loaded" in messages
    summary = pr.summarize(load_repo(repo), "main")
    assert summary.base_error and "the base revision is not valid (2 problems)" in summary.base_error


# --------------------------------------------------------------------------- values that look like secrets (kind 14)

STRIPE_KEY = "sk_live_51H8xQzLkqFjv0Zr2sXb7pA"
AWS_KEY = "AKIAIOSFODNN7EXAMPLE"


def set_in(relative: str, *keys, value):
    def mutate(repo: Path) -> None:
        def change(data):
            target = data
            for key in keys[:-1]:
                target = target[key]
            target[keys[-1]] = value

        edit_yaml(repo / relative, change)

    return mutate


SECRET_VALUES = [
    # (id, mutation, secret that must not be shown, the message with what is shown instead)
    ("label-value", set_in("connectors/orders.yaml", "labels", value={"team": STRIPE_KEY}), STRIPE_KEY,
     "labels: 'sk_l…' (31 characters, not shown) is not a valid label value"),
    ("platform-label-key", set_in("platform.yaml", "labels", value={AWS_KEY: "x"}), AWS_KEY,
     "labels: 'AKIA…' (20 characters, not shown) is not a valid label key"),
    ("secret-value-instead-of-its-id",
     set_in("connectors/payments.yaml", "ingestion", "secret_name", value=STRIPE_KEY + "/x"), STRIPE_KEY,
     "ingestion.secret_name: 'sk_l…' (33 characters, not shown) is not a valid Secret Manager secret id"),
    ("api-key-in-a-plain-http-url",
     set_in("connectors/payments.yaml", "ingestion", "api_endpoint",
            value=f"http://api.example.com/v1/charges?api_key={STRIPE_KEY}"), STRIPE_KEY,
     "ingestion.api_endpoint: 'http://api.example.com/v1/charges?…': plain http:// is allowed only for loopback"),
    ("password-in-a-plain-http-url",
     set_in("connectors/payments.yaml", "ingestion", "api_endpoint",
            value="http://svc:correct-horse-battery@api.example.com/v1"), "correct-horse-battery",
     "ingestion.api_endpoint: "),
    ("a-token-pasted-as-a-key", set_in("connectors/orders.yaml", STRIPE_KEY, value="x"), STRIPE_KEY,
     "unknown key 'sk_l…' (31 characters, not shown)"),
    ("a-token-pasted-as-the-schema-file", set_in("connectors/orders.yaml", "schema", "file", value=STRIPE_KEY),
     STRIPE_KEY, "schema.file: schema file 'sk_l…' (31 characters, not shown) does not exist"),
    ("short-ordinary-value-is-shown-whole", set_in("connectors/orders.yaml", "labels", value={"team": "Data Team"}),
     None, "labels: 'Data Team' is not a valid label value"),
]


@pytest.mark.parametrize(("mutate", "secret", "message"), [c[1:] for c in SECRET_VALUES],
                         ids=[c[0] for c in SECRET_VALUES])
def test_errors_quote_at_most_a_redacted_prefix_of_a_secret_looking_value(repo, mutate, secret, message,
                                                                         monkeypatch, capsys):
    mutate(repo)
    err = _apply_touches_nothing(repo, monkeypatch, capsys, message)
    if secret:
        assert secret not in err and secret[:8] not in err


@pytest.mark.parametrize(("url", "shown"), [
    pytest.param("http://svc:correct-horse-battery@api.example.com/v1", "'http://api.example.com/v1'", id="userinfo"),
    pytest.param(f"https://api.example.com/v1?key={STRIPE_KEY}", "'https://api.example.com/v1?…'", id="query"),
    pytest.param("https://hooks.slack.com/services/T000/B000/XXXXXXXXXXXXXXXXXXXXXXXX", "'https://hooks.slack.com/…'",
                 id="long-path"),
    pytest.param("https://api.example.com/v1/charges", "'https://api.example.com/v1/charges'", id="ordinary"),
])
def test_urls_in_messages_lose_credentials_queries_and_long_paths(url, shown):
    from reconciler.naming import shown_url

    assert shown_url(url) == shown


@pytest.mark.parametrize(("mutate", "message"), [
    pytest.param(set_in("platform.yaml", "pubsub", "message_retention", value="١٠d"),
                 "pubsub.message_retention: invalid duration '١٠d'", id="duration-in-arabic-indic-digits"),
    pytest.param(set_in("connectors/payments.yaml", "ingestion", "api_endpoint", value="https://api.example.com:٤٤٣/v1"),
                 "ingestion.api_endpoint: 'https://api.example.com:٤٤٣/v1' is not an https:// URL",
                 id="url-port-in-arabic-indic-digits"),
])
def test_numbers_are_ascii_digits_everywhere(repo, mutate, message, monkeypatch, capsys):
    mutate(repo)
    _apply_touches_nothing(repo, monkeypatch, capsys, message)
