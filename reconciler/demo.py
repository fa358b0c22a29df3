"""The demo's data: sample files and events through the local jobs, counted at the end.

After ``headwater demo`` has applied the example platform (its Dataflow jobs running on the
local runner against the emulators), `move_sample_data` makes the platform do its job with the
data in ``<repo>/sample-data/``:

* ``reference/*.json`` - tables the gold jobs join with but no connector owns
  (``reference.customers``): created and filled before the plan (`seed_reference_tables`: a plan
  refuses a join to a table that is neither declared nor existing);
* ``<source_id>/*`` of a ``batch_file`` source - dropped into its landing prefix (gzipped when
  the connector says ``compression: gzip``); each file's arrival event (the local stand-in for
  the bucket's notification) starts its ingestion by the streaming ``<id>-ingest`` job, with no
  cron tick; the job moves the files on to the Bronze bucket once ingested;
* ``<source_id>/*`` of an ``event_streaming`` source - each line published as one message to
  its topic, where the running streaming job picks it up;
* ``<source_id>/*`` of a ``cloud_transfer`` source - put into its S3 bucket on the local S3 server
  (moto), then a run of its transfer job (the local stand-in for Storage Transfer) copies them into
  the landing prefix, where their file events start the streaming ``<id>-ingest`` job as for a
  ``batch_file`` source; a second run shows that nothing already copied is copied again;
* ``<source_id>/`` of a ``database_cdc`` source - ``tables.sql`` creates its tables, with some rows,
  in a fresh database of the local PostgreSQL (`prepare_repo`, which points the source's
  connection profile at that database); once the stream runs (the local stand-in for Datastream
  reading its replication slot), ``changes.sql`` inserts, updates and deletes rows, one
  transaction per block; Silver must come to equal the tables' current state. Its "records" are
  the change events (the backfilled rows included), its "silver" the rows of its Silver tables;
* ``<source_id>/*`` of a ``streaming_api`` ``rest_api`` source - served by a local REST API
  (`reconciler.demo_api`, started by `prepare_repo` before the plan, which points the source's
  ``api_endpoint`` at it): the source's connector, running on the local stand-in for Cloud Run,
  polls it and publishes every record;
* ``<source_id>/*`` of a ``webhook`` source - each line POSTed to the connector as one signed
  delivery (and one forged delivery, which must be refused);
* then a run of every gold job, once Silver has settled.

The sample data holds bad and duplicate records on purpose. ``expected.json`` says what should
come out per source (Silver rows, dead letters, Gold rows; records = Silver + duplicates + dead
letters); waiting stops when the counts match it, or after a bounded time. Dead letters are read
from the ``<source_id>-dlq-hold`` subscriptions, with the reason each carries as an attribute.
"""

from __future__ import annotations

import gzip
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.compile import compile_resources, connector_service_name, job_name, topic_id
from reconciler.load import DesiredState
from reconciler.resources import Kind, Resource

SAMPLE_DIR = "sample-data"
STREAM_WAIT_S = 75.0  # how long streaming jobs get to process what was published
RUN_WAIT_S = 90.0  # how long one batch run may take
SETTLE_S = 8.0  # without expectations: counts unchanged this long means done


@dataclass
class SourceData:
    """What was sent for one source, and what came out."""

    source_id: str
    sent: int = 0
    silver: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)
    gold: dict[str, int] = field(default_factory=dict)
    expected: dict[str, Any] = field(default_factory=dict)
    # database_cdc (issue 10): Silver rows per table, Bronze change events, and whether Silver
    # equals the source tables' current state (the counts alone cannot say: deletes go both ways).
    cdc: dict[str, Any] = field(default_factory=dict)

    def matches(self) -> bool:
        exp = self.expected
        return (not exp or (self.silver == exp["silver"] and sum(self.dead_letters.values()) == exp["dead_letters"]
                            and all(self.gold.get(t) == n for t, n in exp.get("gold", {}).items())))


@dataclass(frozen=True)
class _Jobs:
    ingest: Resource
    gold: tuple[Resource, ...]


@dataclass
class DemoConnectors:
    """What `prepare_repo` set up: the repo copy to apply, the local APIs, the secrets' values."""

    repo: Path
    apis: dict[str, Any] = field(default_factory=dict)  # source id -> reconciler.demo_api.SampleApi
    secrets: dict[str, str] = field(default_factory=dict)  # secret id -> value (never printed)

    def stop(self) -> None:
        for api in self.apis.values():
            api.stop()


def prepare_repo(repo: Path, state_dir: Path, say: Callable[[str], None]) -> DemoConnectors:
    """Make the example's connectors runnable here, in a copy of the repo under ``state_dir``.

    Each secret a connector names gets a random value in the local secrets directory
    (``<state_dir>/secrets/<secret id>``, what the local stand-in for Cloud Run mounts), and each
    ``rest_api`` source with sample data is served by a local `SampleApi`, its ``api_endpoint``
    rewritten to it in the copy. The original repo is left as it is.
    """
    import re
    import secrets as random_secrets
    import shutil

    from reconciler.demo_api import SampleApi
    from reconciler.load import load_repo

    copy = Path(state_dir) / "demo-repo"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(repo, copy)
    _local_databases(copy, Path(state_dir), say)  # database_cdc sources (issue 10)
    state = load_repo(copy)
    secrets_dir = Path(state_dir) / "secrets"
    secrets_dir.mkdir(parents=True, exist_ok=True)
    result = DemoConnectors(copy)
    from reconciler import serving_demo  # issue 12: the data API's client and secrets

    serving_demo.prepare(copy, secrets_dir, result.secrets)
    state = load_repo(copy)
    for source in state.sources:
        for ref in source.secrets:
            path = secrets_dir / ref.secret_id
            if not path.exists():
                path.write_text(random_secrets.token_urlsafe(24))
                path.chmod(0o600)
            result.secrets[ref.secret_id] = path.read_text().strip()
        ingestion = source.connector.ingestion
        if ingestion.pattern == "database_cdc":  # the local PostgreSQL's password (issue 10)
            from reconciler import cdc, local_postgres

            pg = local_postgres.load(Path(state_dir))
            profile = state.platform.datastream.connection_profiles[cdc.profile_id(ingestion.connection_profile)]
            if pg is not None:
                path = secrets_dir / profile.password_secret
                path.write_text(pg.password())
                path.chmod(0o600)
                result.secrets[profile.password_secret] = pg.password()
        samples = copy / SAMPLE_DIR / source.source_id
        if ingestion.pattern != "streaming_api" or ingestion.connector_type != "rest_api" or not samples.is_dir():
            continue
        pagination = ingestion.pagination
        if ingestion.auth_type != "bearer_token" or pagination.type != "cursor":
            say(f"  {source.source_id}: the demo API speaks bearer auth and cursor pages only; not served")
            continue
        records = [json.loads(line) for p in sorted(samples.iterdir()) if p.is_file()
                   for line in p.read_text().splitlines() if line.strip()]
        from urllib.parse import urlsplit

        api = SampleApi(records, token=result.secrets[ingestion.secret_name],
                        path=urlsplit(ingestion.api_endpoint).path, cursor_field=ingestion.cursor_field,
                        cursor_param=ingestion.cursor_param, page_param=pagination.param,
                        records_key=ingestion.records or "data", next_key=pagination.path,
                        page_size=4, faults={"429_every": 3}).start()
        result.apis[source.source_id] = api
        connector_file = copy / source.connector_file
        url = api.url
        text = re.sub(r"(?m)^(\s*api_endpoint:\s*)\S+", lambda m, url=url: m.group(1) + url,
                      connector_file.read_text())
        connector_file.write_text(text)
        say(f"  {source.source_id}: serving {len(records)} sample records at {api.url} "
            f"(every 3rd request answered 429) instead of {ingestion.api_endpoint}")
    return result


def seed_reference_tables(state: DesiredState, say: Callable[[str], None]) -> None:
    """Create and fill the tables of ``sample-data/reference/`` (their datasets too), unless they are
    there: what the example's gold joins read, and no source declares."""
    from providers import bigquery_data

    project = state.platform.project
    for path in sorted((Path(state.root) / SAMPLE_DIR / "reference").glob("*.json")):
        ref = json.loads(path.read_text())
        bigquery_data.ensure_table_with_rows(project, f"{project}.{ref['table']}", ref["schema"], ref["rows"])
        say(f"  reference table {ref['table']}: {len(ref['rows'])} rows")


def move_sample_data(state: DesiredState, runner: Any, say: Callable[[str], None],
                     connectors: DemoConnectors | None = None) -> list[SourceData]:
    """Send the sample data through the running local jobs and connectors; the counts per source.

    ``runner`` is the `providers.localrunner.LocalRunnerProvider` the jobs and the connectors'
    services run on; ``connectors`` what `prepare_repo` set up.
    """
    from providers import bigquery_data, pubsub_data, storage_data

    root = Path(state.root) / SAMPLE_DIR
    project = state.platform.project
    expected = json.loads((root / "expected.json").read_text()) if (root / "expected.json").exists() else {}
    jobs = _jobs_by_source(compile_resources(state))
    connectors_by_id = {s.source_id: s.connector for s in state.sources}
    results = {sid: SourceData(sid, expected=expected.get(sid, {})) for sid in jobs if (root / sid).is_dir()}

    for path in sorted((root / "reference").glob("*.json")):
        ref = json.loads(path.read_text())
        bigquery_data.ensure_table_with_rows(project, f"{project}.{ref['table']}", ref["schema"], ref["rows"])
        say(f"  reference table {ref['table']}: {len(ref['rows'])} rows")

    streaming = []
    for sid, data in results.items():
        job = jobs[sid].ingest
        ingestion = connectors_by_id[sid].ingestion
        files = sorted(p for p in (root / sid).iterdir() if p.is_file())
        lines = [line.encode() for p in files for line in p.read_text().splitlines() if line.strip()]
        streaming.append(data)
        if ingestion.pattern == "batch_file":
            if ingestion.schedule:
                # The sweep runs once when started on the local runner: let that (empty) run end
                # first, so the files arrive by their events alone and one job reads them all (the
                # dedup key is remembered per job: a file read by the sweep and its duplicate read
                # by the event job would both reach Silver).
                _wait_until_idle(runner, job_name(sid, "sweep"))
            prefix = job.spec["parameters"]["input_pattern"]
            gz = job.spec["pipeline"].get("input", {}).get("compression") == "gzip"
            for p in files:
                body = p.read_bytes()
                data.sent += sum(1 for line in body.splitlines() if line.strip())
                name = p.stem + ".json" + (".gz" if gz else "")
                storage_data.upload(project, prefix.rstrip("/") + "/" + name, gzip.compress(body) if gz else body)
            say(f"  {sid}: dropped {len(files)} files ({data.sent} records) in {prefix}; their arrival "
                f"events start {job.name} (no cron tick)")
        elif ingestion.pattern == "database_cdc":  # issue 10: changes in the local PostgreSQL
            say("  " + _database_changes(state, sid, root / sid, data))
        elif ingestion.pattern == "cloud_transfer":  # issue 10: via the local S3 and Storage Transfer's stand-in
            say("  " + _transfer_samples(state, runner, sid, ingestion, files, data))
        elif ingestion.pattern == "streaming_api" and ingestion.connector_type == "rest_api":
            api = (connectors.apis if connectors else {}).get(sid)
            data.sent = len(api.records) if api else 0
            say(f"  {sid}: the connector polls {api.url if api else ingestion.api_endpoint} "
                f"({data.sent} records there)")
        elif ingestion.pattern == "streaming_api":
            data.sent = len(lines)
            say("  " + _deliver_webhooks(runner, compile_resources(state), sid, ingestion, lines,
                                         (connectors.secrets if connectors else {})))
        else:
            pubsub_data.publish(project, topic_id(connectors_by_id[sid]), lines)
            data.sent = len(lines)
            say(f"  {sid}: published {len(lines)} events to topic {topic_id(connectors_by_id[sid])}")

    def count(data: SourceData) -> None:
        if data.cdc:  # database_cdc (issue 10): every table's Silver, compared with the database
            _count_cdc(state, jobs[data.source_id].ingest, data)
        else:
            data.silver = bigquery_data.count_rows(project,
                                                   jobs[data.source_id].ingest.spec["pipeline"]["silver"]["table"])
        for message in pubsub_data.pull_available(project, f"{data.source_id}-dlq-hold"):
            data.dead_letters[message.attributes.get("reason", "(no reason)")] += 1

    if streaming:
        say(f"  waiting for the streaming jobs (at most {STREAM_WAIT_S:.0f} s)...")
        _wait_for_streams(streaming, count)

    for sid, data in results.items():
        for job in jobs[sid].gold:
            _wait_until_idle(runner, job.name)
            status = runner.wait_for_run(job.name, runner.run_now(job.name), RUN_WAIT_S)
            table = job.spec["pipeline"]["gold"]["table"]
            data.gold[table.rsplit(".", 1)[-1]] = bigquery_data.count_rows(project, table)
            if status["last_exit_code"] != 0:
                say(f"  {job.name}: run ended with exit code {status['last_exit_code']} (log: "
                    f"{runner.record(job.name).log})")
    return list(results.values())


def report(results: list[SourceData]) -> list[str]:
    """The counts as printed lines, one per source."""
    lines = []
    for d in results:
        reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(d.dead_letters.items())) or "none"
        gold = ", ".join(f"{table} {n} rows" for table, n in sorted(d.gold.items())) or "none"
        if d.cdc:  # database_cdc (issue 10)
            tables = ", ".join(f"{t} {n}" for t, n in d.cdc.get("silver", {}).items())
            same = "= the tables' current state in PostgreSQL" if d.cdc.get("in_sync") else \
                "DIFFERENT from the tables in PostgreSQL"
            lines.append(f"{d.source_id}: {d.cdc['backfilled']} rows backfilled + {d.cdc['changes']} row changes in "
                         f"PostgreSQL -> Bronze {d.cdc.get('bronze', 0)} change events, Silver {d.silver} rows "
                         f"({tables}) {same}, dead letters {sum(d.dead_letters.values())} ({reasons})")
        else:
            lines.append(f"{d.source_id}: {d.sent} records sent -> Silver {d.silver} rows, "
                         f"dead letters {sum(d.dead_letters.values())} ({reasons}), Gold: {gold}")
        if d.expected and not d.matches():
            exp = d.expected
            lines.append(f"  expected Silver {exp['silver']}, dead letters {exp['dead_letters']}, Gold {exp.get('gold')}")
    return lines


def _jobs_by_source(resources: list[Resource]) -> dict[str, _Jobs]:
    ingest: dict[str, Resource] = {}
    gold: dict[str, list[Resource]] = {}
    for r in resources:
        if r.kind != Kind.DATAFLOW_JOB:
            continue
        if r.spec["template"] == "bigquery_to_bigquery" and "gold" in r.spec["pipeline"]:  # not features (issue 12)
            gold.setdefault(r.source_id, []).append(r)
        elif r.name == job_name(r.source_id, "ingest"):
            ingest[r.source_id] = r
    return {sid: _Jobs(job, tuple(gold.get(sid, ()))) for sid, job in ingest.items()}


def _transfer_samples(state: DesiredState, runner: Any, sid: str, ingestion: Any, files: list[Path],
                      data: SourceData) -> str:
    """A cloud_transfer source's sample files: put into its bucket in the local S3 (moto), then
    one run of its transfer job now and a second one (which finds nothing new to copy)."""
    from providers.local_transfer import LocalTransferProvider, local_s3
    from reconciler.compile import transfer_job_name

    s3 = local_s3()
    bucket, prefix = ingestion.source_bucket, ingestion.source_path
    try:
        s3.create_bucket(Bucket=bucket)
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass
    for p in files:
        body = p.read_bytes()
        data.sent += sum(1 for line in body.splitlines() if line.strip())
        s3.put_object(Bucket=bucket, Key=prefix + p.name, Body=body)
    transfers = LocalTransferProvider(state.platform.project, runner.state_dir)
    name = transfer_job_name(sid)
    runs = [transfers.wait_for_run(name, transfers.run_now(name), RUN_WAIT_S)["last"]["counters"] for _ in range(2)]
    return (f"{sid}: put {len(files)} objects ({data.sent} records) into s3://{bucket}/{prefix} (the local S3); "
            f"a transfer run copied {runs[0]['objectsCopiedToSink']} to the landing prefix and announced it on "
            f"topic {sid}, their file events start the ingestion; a second run copied "
            f"{runs[1]['objectsCopiedToSink']} ({runs[1]['objectsFromSourceSkippedBySync']} already there)")


# --------------------------------------------------------------------------- database_cdc (issue 10)


def _local_databases(copy: Path, state_dir: Path, say: Callable[[str], None]) -> None:
    """Point each database_cdc source's connection profile (in the copy's platform.yaml) at the
    local PostgreSQL and create its database afresh from ``sample-data/<source_id>/tables.sql``; a
    source that cannot run here (no local PostgreSQL, no tables.sql) is left out of the copy."""
    import yaml

    from reconciler import cdc, local_postgres
    from reconciler.yamlsrc import load_yaml

    platform_file = copy / "platform.yaml"
    platform, _ = load_yaml(platform_file)
    profiles = (platform.get("datastream") or {}).get("connection_profiles") or {}
    pg = local_postgres.load(state_dir)
    for connector_file in sorted((copy / "connectors").glob("*.yaml")):
        data, _ = load_yaml(connector_file)
        ingestion = data.get("ingestion") or {}
        if ingestion.get("pattern") != "database_cdc":
            continue
        sid = data.get("source_id")
        tables_sql = copy / SAMPLE_DIR / str(sid) / "tables.sql"
        profile = profiles.get(cdc.profile_id(str(ingestion.get("connection_profile"))))
        if pg is None or not tables_sql.exists() or profile is None or profile.get("database_type") != "postgresql":
            why = "no local PostgreSQL (scripts/setup installs it)" if pg is None else "no sample tables.sql"
            say(f"  {sid}: left out of the demo: {why}")
            connector_file.unlink()
            continue
        import psycopg

        database = profile["database"]
        with psycopg.connect(pg.conninfo(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{database}"')
        with psycopg.connect(pg.conninfo(database), autocommit=True) as conn:
            conn.execute(tables_sql.read_text())
        profile.update(host=pg.host, port=pg.port, user=pg.user)
        say(f"  {sid}: database {database} created in the local PostgreSQL ({pg.host}:{pg.port}) from "
            f"{tables_sql.relative_to(copy)}; connection profile pointed there instead of its declared host")
    platform_file.write_text(yaml.safe_dump(platform, sort_keys=False))


def _cdc_connection(state: DesiredState, sid: str) -> Any:
    import psycopg

    from reconciler import cdc

    source = next(s for s in state.sources if s.source_id == sid)
    profile = state.platform.datastream.connection_profiles[cdc.profile_id(source.connector.ingestion.connection_profile)]
    from providers.secretmanager import LocalSecrets, local_secrets_dir

    # The profile's own secret, as the local stand-in reads it ($HEADWATER_SECRETS_DIR in the demo).
    password = LocalSecrets(local_secrets_dir(".headwater")).value(profile.password_secret)
    return source, psycopg.connect(host=profile.host, port=profile.effective_port, user=profile.user,
                                   dbname=profile.database, password=password, autocommit=True)


def _database_changes(state: DesiredState, sid: str, samples: Path, data: SourceData) -> str:
    """Run ``changes.sql`` against the source's database, one transaction per block."""
    source, conn = _cdc_connection(state, sid)
    blocks = []
    for block in samples.joinpath("changes.sql").read_text().split("\n\n"):
        text = "\n".join(line for line in block.splitlines() if not line.strip().startswith("--"))
        statements = [s.strip() for s in text.split(";") if s.strip()]
        if statements:
            blocks.append(statements)
    changed = 0
    with conn:
        backfilled = sum(conn.execute(f'SELECT count(*) FROM "{t.owner}"."{t.name}"').fetchone()[0]  # noqa: S608
                         for t in source.tables)
        for statements in blocks:
            with conn.transaction():
                for statement in statements:
                    changed += max(conn.execute(statement).rowcount, 0)
    data.cdc = {"backfilled": backfilled, "changes": changed}
    data.sent = backfilled + changed
    return (f"{sid}: {len(blocks)} transactions ({changed} row changes: inserts, updates, deletes) in database "
            f"{source.connector.ingestion.connection_profile}; the local stand-in for Datastream reads them from "
            f"replication slot {source.connector.ingestion.replication_slot or 'headwater_' + sid}")


def _count_cdc(state: DesiredState, job: Resource, data: SourceData) -> None:
    """Silver rows per table, Bronze change events, and whether each Silver table equals its source table."""
    import datetime as dt
    from decimal import Decimal

    from beam.common.clients import bigquery_client

    client = bigquery_client(state.platform.project)
    source, conn = _cdc_connection(state, data.source_id)

    def norm(v: Any) -> Any:
        if isinstance(v, Decimal):
            return float(v)
        if isinstance(v, dt.datetime):
            return v.astimezone(dt.UTC)
        return v

    silver_rows, bronze_events, in_sync = {}, 0, True
    with conn:
        for table, spec in zip(source.tables, job.spec["pipeline"]["cdc"]["tables"], strict=True):
            names = [f.name for f in table.schema.fields]
            order = ", ".join(table.primary_key)
            live = [tuple(norm(v) for v in row) for row in conn.execute(
                f'SELECT {", ".join(chr(34) + n + chr(34) for n in names)} FROM "{table.owner}"."{table.name}" '  # noqa: S608
                f"ORDER BY {order}").fetchall()]
            rows = [tuple(norm(r[n]) for n in names) for r in client.query(
                f"SELECT {', '.join('`' + n + '`' for n in names)} FROM `{spec['silver']['table']}` "  # noqa: S608
                f"ORDER BY {order}").result()]
            silver_rows[table.key] = len(rows)
            in_sync = in_sync and rows == live
            bronze_events += next(iter(client.query(f"SELECT COUNT(*) AS n FROM `{spec['bronze']['table']}`").result())).n
    data.silver = sum(silver_rows.values())
    data.cdc.update(silver=silver_rows, bronze=bronze_events, in_sync=in_sync)


def _wait_until_idle(runner: Any, name: str) -> None:
    """Until a batch job's scheduler is up and no run is in progress."""
    deadline = time.monotonic() + RUN_WAIT_S
    while time.monotonic() < deadline:
        status = runner.status(name)
        if status["runs"] and not status["running"]:
            return
        time.sleep(0.2)
    raise TimeoutError(f"local job {name} did not become idle within {RUN_WAIT_S:.0f} s")


def _wait_for_streams(streaming: list[SourceData], count: Callable[[SourceData], None]) -> None:
    """Count until each streaming source matches its expectations (or settles), within the bound."""
    deadline = time.monotonic() + STREAM_WAIT_S
    last: dict[str, tuple[int, int]] = {}
    changed = time.monotonic()
    while True:
        for data in streaming:
            count(data)
        now_counts = {d.source_id: (d.silver, sum(d.dead_letters.values())) for d in streaming}
        if now_counts != last:
            last, changed = now_counts, time.monotonic()
        done = all(_ingested(d) for d in streaming)
        settled = not any(d.expected for d in streaming) and any(v != (0, 0) for v in last.values()) \
            and time.monotonic() - changed > SETTLE_S
        if done or settled or time.monotonic() > deadline:
            return
        time.sleep(1.0)


def _ingested(data: SourceData) -> bool:
    exp = data.expected
    if data.cdc and not data.cdc.get("in_sync"):  # database_cdc: Silver must equal the database
        return False
    return bool(exp) and data.silver >= exp["silver"] and sum(data.dead_letters.values()) >= exp["dead_letters"]


def sign_delivery(signature: Any, key: str, body: bytes, now: float) -> str:
    """The signature header value a sender computes for ``body`` (`reconciler.config.Signature`)."""
    import hashlib
    import hmac

    digest = getattr(hashlib, signature.algorithm)
    if signature.scheme == "timestamped":
        stamp = str(int(now))
        mac = hmac.new(key.encode(), stamp.encode() + b"." + body, digest).hexdigest()
        return f"t={stamp},v1={mac}"
    return f"{signature.algorithm}=" + hmac.new(key.encode(), body, digest).hexdigest()


def _deliver_webhooks(runner: Any, resources: list[Resource], sid: str, ingestion: Any, lines: list[bytes],
                      secret_values: dict[str, str]) -> str:
    """POST each line as one signed delivery, then one forged delivery; what was answered."""
    import urllib.error
    import urllib.request

    url = runner.service_url(connector_service_name(sid)) + ingestion.webhook_path
    statuses: Counter[int] = Counter()

    def post(body: bytes, headers: dict[str, str]) -> int:
        request = urllib.request.Request(url, data=body, method="POST",
                                         headers={"Content-Type": "application/json", **headers})
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return answer.status
        except urllib.error.HTTPError as refused:
            return refused.code

    signature = ingestion.signature if ingestion.signature != "none" else None
    for n, body in enumerate(lines, 1):
        headers = {ingestion.delivery_id_header: f"demo-{n}"} if ingestion.delivery_id_header else {}
        if signature:
            headers[signature.header] = sign_delivery(signature, secret_values[signature.secret_name], body,
                                                      time.time())
        statuses[_retry_until_up(lambda b=body, h=headers: post(b, h))] += 1
    forged = "none"
    if signature:
        headers = {signature.header: sign_delivery(signature, "not-the-key", lines[0], time.time())}
        forged = str(post(lines[0], headers))
    answered = ", ".join(f"{n}x {status}" for status, n in sorted(statuses.items()))
    return f"{sid}: POSTed {len(lines)} signed deliveries to {url} ({answered}); a forged one got {forged}"


def _retry_until_up(send: Callable[[], int], wait_s: float = 20.0) -> int:
    """The connector process may still be starting: retry while its port refuses connections."""
    import urllib.error

    deadline = time.monotonic() + wait_s
    while True:
        try:
            return send()
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
