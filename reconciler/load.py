"""Loading and validating a desired-state repo.

`load_repo(root)` reads ``platform.yaml``, ``connectors/*.yaml`` and the schemas they name, and
returns a `DesiredState` — or raises `InvalidDesiredState` carrying *every* problem found, each
as ``path/to/file.yaml:LINE:COL: field.path: message``. Nothing here talks to GCP: validation
always happens before the first API call.

Checks that fit in one file are the pydantic models' (`reconciler.config`); this module adds
those that need several files: duplicate ``source_id``, file name vs ``source_id``, the schema
file (missing, outside the repo, different ``source_id``), every field that processing,
partitioning or clustering names but the schema lacks, and BigQuery's limits on the tables a
schema becomes (columns, nesting). One problem never hides another: every file is checked,
and a file with a problem is still checked as far as it can be.

Every file is read through `reconciler.yamlsrc`: it must be a regular file that resolves
inside the repository (``within``, by default the desired-state directory itself; the daemon
passes the root of its checkout), read with a byte bound.

A load with the previous state (`load_repo`'s ``previous``) reuses what did not change: the
full load (`_load_all`) lists every file and takes the previous `Source` of each unchanged one;
the load of a git commit (`_load_changed`) reads only the files git names and checks them
against what the previous state's `_Index` knows of the other sources - the same checks, fed
by registries kept with the state instead of made again from every source.
"""

from __future__ import annotations

import bisect
import contextlib
import difflib
import fnmatch
import functools
import gc
import os
import stat
import time
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from reconciler import naming
from reconciler.config import INGESTION_PATTERNS, Connector, FieldError, Platform, SourceSchema, parse_metric
from reconciler.yamlsrc import LoadError, SourceMap, load_json, load_yaml

PLATFORM_FILE = "platform.yaml"
CONNECTORS_DIR = "connectors"
CONNECTOR_FILES = ("*.yaml", "*.yml")  # in CONNECTORS_DIR, not below it

PARTITION_TYPES = {"TIMESTAMP", "DATE", "DATETIME"}
# BigQuery clustering accepts these top-level, non-repeated column types (not FLOAT64, RECORD, JSON).
CLUSTER_TYPES = {"STRING", "INT64", "INTEGER", "NUMERIC", "BIGNUMERIC", "BOOL", "BOOLEAN", "DATE",
                 "DATETIME", "TIMESTAMP", "GEOGRAPHY"}
DERIVED_DATE = "date"  # group_by may name the day of the partition field


@dataclass(frozen=True, order=True)
class Problem:
    file: str
    line: int
    column: int
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.field}: " if self.field else ""
        if self.line == 0:  # about a path, not a position in a file
            return f"{self.file}: {where}{self.message}"
        return f"{self.file}:{self.line}:{self.column}: {where}{self.message}"


class InvalidDesiredState(Exception):
    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = sorted(set(problems))
        super().__init__("\n".join(str(p) for p in self.problems))


class RepoNotFound(InvalidDesiredState):
    """The desired-state directory itself is missing or not a directory (one problem, no position)."""


@dataclass(frozen=True)
class SecretRef:
    """A Secret Manager secret a connector names, and where (for a plan-time error if it is missing)."""

    secret_id: str
    file: str
    line: int
    column: int
    field: str


@dataclass(frozen=True)
class Source:
    connector: Connector
    schema: SourceSchema | None  # None for a database_cdc source: each of its tables has its own
    connector_file: str
    schema_file: str
    secrets: tuple[SecretRef, ...] = ()
    # Where each value is in the files (for problems found on what compile builds: reconciler.limits).
    connector_map: SourceMap | None = field(default=None, compare=False, repr=False)
    schema_map: SourceMap | None = field(default=None, compare=False, repr=False)
    tables: tuple[Any, ...] = ()  # database_cdc: its tables (reconciler.cdc.Table), schemas read

    @property
    def source_id(self) -> str:
        return self.connector.source_id


@dataclass(frozen=True)
class DesiredState:
    root: Path
    platform: Platform
    sources: tuple[Source, ...]
    revision: str | None = None
    platform_map: SourceMap | None = field(default=None, compare=False, repr=False)
    # What `reconciler.compile.compile_resources` made of this platform and these sources while
    # loading (the limits check compiles them), so that a plan does not compile them again. Not an
    # argument: `dataclasses.replace` (other sources, another platform) leaves it unset.
    _compiled: tuple[Any, ...] | None = field(default=None, init=False, compare=False, repr=False)
    # What compile made of each part (`reconciler.compile`), for the next revision's compile to
    # reuse where its platform and sources are these very objects (`load_repo`'s ``previous``).
    _compile_memo: Any = field(default=None, init=False, compare=False, repr=False)
    # What each file looked like when it was read (`FileStamp` by absolute path) and when the load
    # began (ns): the next `load_repo(previous=...)` reuses what an unchanged file made.
    _stamps: dict[str, Any] | None = field(default=None, init=False, compare=False, repr=False)
    _loaded_at_ns: int = field(default=0, init=False, compare=False, repr=False)
    # What the checks across files know of these sources (`_Index`), for the next git-mode load
    # to update for the files a commit changed instead of checking every source again.
    _index: Any = field(default=None, init=False, compare=False, repr=False)

    @property
    def source_ids(self) -> list[str]:
        return [s.source_id for s in self.sources]


@dataclass
class _Collector:
    root: Path
    within: Path | None = None  # files must resolve inside this directory (default: root)
    problems: list[Problem] = field(default_factory=list)

    def add(self, file: str, position: tuple[int, int], field_path: str, message: str) -> None:
        self.problems.append(Problem(file, position[0], position[1], field_path, message))

    def load(self, path: Path, loader, model: type[BaseModel], precheck=None) -> tuple[Any, SourceMap] | None:
        """Parse and validate one file; record its problems; the model instance or None.

        ``precheck(data, source_map)`` may return ``(loc, field, message)`` for a problem that makes
        the model's own errors misleading: it is reported alone.
        """
        rel = self.rel(path)
        try:
            data, source_map = loader(path, self.within or self.root)
        except LoadError as exc:
            self.add(rel, (exc.line, exc.column), "", exc.message)
            return None
        except OSError as exc:
            self.add(rel, (1, 1), "", f"cannot read file: {exc.strerror}")
            return None
        if not isinstance(data, dict):
            self.add(rel, source_map.find(()), "", f"expected a mapping at the top level, found {_kind(data)}")
            return None
        early = precheck(data, source_map) if precheck else None
        if early:
            loc, field_path, message = early
            self.add(rel, source_map.find(loc), field_path, message)
            return None
        try:
            return model.model_validate(data), source_map
        except ValidationError as exc:
            for error in exc.errors():
                if _other_union_member(error, data):
                    continue
                cause = (error.get("ctx") or {}).get("error")
                # A model check that names the field at fault is reported at that field.
                raw = (*error["loc"], cause.field) if isinstance(cause, FieldError) else error["loc"]
                loc = _data_loc(data, raw)
                if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
                    loc = (*loc, "pattern")  # the discriminator is what is wrong
                self.add(rel, source_map.find(loc), _dotted(loc), _message(error, model, data, loc))
            return None

    def rel(self, path: Path) -> str:
        text, root = str(path), str(self.root)
        if text.startswith(root) and text[len(root):len(root) + 1] == os.sep:  # what relative_to says, sooner
            return text[len(root) + 1:]
        try:
            return str(path.relative_to(self.root))
        except ValueError:
            return str(path)


def load_repo(root: Path | str, within: Path | str | None = None,
              previous: DesiredState | None = None, changed: Iterable[str] | None = None) -> DesiredState:
    """Read and validate the desired state under ``root``; raise `InvalidDesiredState` on any problem.

    ``within``: the directory every file read must resolve inside (default ``root``); the daemon
    passes its checkout's root when the desired state is a subdirectory of the repository.

    ``previous``: the last state loaded from the same directory (the daemon's last revision), to
    load a commit in time that grows with what it changed (issue 14, "Incremental convergence").
    A source whose connector and schema files are unchanged since ``previous`` was loaded, under
    an unchanged ``platform.yaml``, is ``previous``'s very `Source` object, not read again; an
    unchanged ``platform.yaml`` gives ``previous``'s very `Platform`; compile then reuses what
    it made of them (`reconciler.compile.compile_resources`' ``previous``), and the limits check
    looks only at what compile made anew. Unchanged means the same `FileStamp` (size, mtime,
    ctime, inode - git's own test of a work-tree file, `git-update-index(1)`), and not "racily
    clean": a file modified at, or `RACY_WINDOW_NS` before, the moment ``previous``'s load began
    is read again, because a later change within the file system's timestamp granularity would
    not show.

    ``changed`` (with ``previous``): the files that differ between the revision ``previous`` was
    loaded from and what is at ``root`` now, as paths relative to ``within`` - what git says
    (the daemon: `git diff --name-only --no-renames`, on a checkout it forced clean). Then no
    stamp is compared: a file not in ``changed`` that ``previous`` read as a regular file is
    unchanged, racily clean or not (git compared contents); and the files are not even listed:
    the connector files are ``previous``'s plus and minus those git names, and the checks that
    span files (duplicate ids, webhook paths, landing prefixes, serving, governance, GCP's limits)
    look only at the sources read again, against an index of the others kept with ``previous``
    (`_load_changed`) - a commit that changes one source costs the same at 10 or 10,000 sources.
    Whatever that cannot tell alone (a changed platform, a symbolic link on the way, any
    problem) is the full load's to tell, which lists every file and checks across all sources.

    The result equals a load without ``previous`` either way (tests/test_load_incremental.py,
    tests/test_load_git_delta.py, tests/test_incremental_attacks.py).
    """
    with _collection_paused():
        return _load_repo(root, within, previous, changed)


# A file changed less than this before a load began is read again by the next load whatever its
# stamp: file times come from a coarse clock (a kernel tick behind time.time_ns(), or 2 s on FAT),
# so a change just after a load began may carry a time before it.
RACY_WINDOW_NS = 2 * 10**9


@dataclass(frozen=True)
class FileStamp:
    """What a file looked like when it was read (``os.stat``; times in ns since the epoch)."""

    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int

    @classmethod
    def of(cls, path: Path | str) -> FileStamp | None:
        """The stamp of a regular file; None for anything else (a symbolic link, whose target
        may move without the link changing, is never taken as unchanged) or a missing file."""
        try:
            st = os.lstat(path)
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        return cls(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


@dataclass
class _Reuse:
    """What a load may take from ``previous`` (`load_repo`'s docstring), and the stamps it takes."""

    previous: DesiredState | None
    changed: frozenset[str] | None = None  # absolute paths git says differ; None: compare stamps
    stamps: dict[str, FileStamp | None] = field(default_factory=dict)  # this load's, for the next
    direct_dirs: dict[str, bool] = field(default_factory=dict)  # directory -> no symbolic link on its way

    def unchanged(self, path: Path | str) -> bool:
        """``path`` is as ``previous`` read it; its stamp goes in ``stamps`` either way."""
        key = str(path)
        previous = self.previous
        before = previous._stamps.get(key) if previous is not None and previous._stamps else None
        if self.changed is not None:
            if before is not None and key not in self.changed and self._direct(key):
                self.stamps[key] = before  # untouched since it was stamped (a forced, clean checkout)
                return True
            self.stamps[key] = FileStamp.of(key)
            return False
        stamp = self.stamps[key] = FileStamp.of(key)
        if before is None or stamp is None:
            return False
        racy = max(stamp.mtime_ns, stamp.ctime_ns) >= previous._loaded_at_ns - RACY_WINDOW_NS
        return not racy and before == stamp

    def _direct(self, key: str) -> bool:
        """No directory on ``key``'s way is a symbolic link (the root is resolved): git lists a
        change of this file under ``key`` itself. Through a linked directory (``schemas ->
        shared/``) git names the target's path, or only the link when it is pointed elsewhere:
        such a file is read again, as a linked file is (`FileStamp`)."""
        parent = os.path.dirname(key)
        direct = self.direct_dirs.get(parent)
        if direct is None:
            direct = self.direct_dirs[parent] = os.path.realpath(parent) == parent
        return direct


@dataclass
class _CrossFile:
    """What the checks across connector files have seen so far, each with the file that declared
    it first: source ids (a duplicate is a problem), webhook paths, landing prefixes
    (`_check_ingestion`) and database_cdc tables' BigQuery names (`reconciler.cdc.load_tables`).
    A load fills it file by file; a git-mode load starts from the previous state's, without the
    files it reads again (`_load_changed`)."""

    ids: dict[str, str] = field(default_factory=dict)
    webhook_paths: dict[str, str] = field(default_factory=dict)
    landing_prefixes: dict[tuple[str, str], str] = field(default_factory=dict)  # (bucket, prefix) -> file
    cdc_tables: dict[str, str] = field(default_factory=dict)

    def without(self, sources: Iterable[Source], platform: Platform) -> _CrossFile:
        """A copy that has not seen ``sources``, nor any database_cdc table (every load reads
        the database_cdc sources again: `_Index.reread`)."""
        cross = _CrossFile(dict(self.ids), dict(self.webhook_paths), dict(self.landing_prefixes))
        for source in sources:
            for registry, key in ((cross.ids, source.source_id), (cross.webhook_paths, _webhook_path(source.connector)),
                                  (cross.landing_prefixes, _landing_prefix(source.connector, platform))):
                if key is not None and registry.get(key) == source.connector_file:
                    del registry[key]
        return cross


@contextlib.contextmanager
def _collection_paused():
    """The cyclic garbage collector off while a repo loads (issue 14). Loading allocates a great
    deal that lives on (documents, models, the compiled resources of the limits check): with the
    collector on, its full passes over the growing heap were about a fifth of loading 1,000
    sources. The collector is left as it was if something else had turned it off.

    At the end, what the load allocated goes straight to the oldest generation (``gc.freeze()``
    then ``gc.unfreeze()``: the documented pair moves every tracked object there and resets the
    youngest generation's count): otherwise the first allocation after the load sets off a
    young-generation pass over all of it (~0.1 s per 1,000 sources, every one of them alive),
    and then another. What loading leaves in cycles (a few objects a source) waits for the next
    full collection."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.unfreeze()
        if was_enabled:
            gc.enable()


def _load_repo(root: Path | str, within: Path | str | None, previous: DesiredState | None,
               changed: Iterable[str] | None) -> DesiredState:
    loaded_at_ns = time.time_ns()
    given = Path(root)
    if not given.is_dir():
        what = "is a file, not a directory" if given.exists() else "does not exist"
        raise RepoNotFound([Problem(str(given), 0, 0, "", f"the desired-state directory {what}; --repo names a "
                                    f"directory with {PLATFORM_FILE} and connectors/ at its root")])
    root = given.resolve()
    boundary = Path(within).resolve() if within is not None else root
    if not root.is_relative_to(boundary):
        raise RepoNotFound([Problem(str(given), 0, 0, "", "the desired-state directory resolves outside the "
                                    "repository (a symbolic link?); headwater reads only files inside it")])
    if previous is not None and (previous.root != root or previous._stamps is None):
        previous = None  # another directory: nothing to reuse
    if previous is not None and changed is not None and previous._index is not None:
        state = _load_changed(root, boundary, previous, changed, loaded_at_ns)
        if state is not None:
            return state
    return _load_all(root, boundary, previous, changed, loaded_at_ns)


def _load_all(root: Path, boundary: Path, previous: DesiredState | None, changed: Iterable[str] | None,
              loaded_at_ns: int) -> DesiredState:
    """Every connector file listed and checked, each one's `Source` taken from ``previous``
    where its files are unchanged (`_Reuse`); every check across files over all sources."""
    collector = _Collector(root, boundary)
    reuse = _Reuse(previous, None if changed is None else frozenset(os.path.join(boundary, p) for p in changed))
    stamps = reuse.stamps
    platform = None
    platform_path = root / PLATFORM_FILE
    if not os.path.lexists(platform_path):
        collector.add(PLATFORM_FILE, (1, 1), "", f"missing: a desired-state repo needs {PLATFORM_FILE} at its root")
    elif reuse.unchanged(platform_path):
        platform, platform_map = previous.platform, previous.platform_map
    else:
        previous = reuse.previous = None  # platform.yaml changed: every source is checked against the new one
        loaded = collector.load(platform_path, load_yaml, Platform, precheck=platform_precheck)
        if loaded:
            platform, platform_map = loaded
            _check_platform_names(collector, platform, platform_map)
    reusable = {s.connector_file: s for s in previous.sources if not s.tables} if previous is not None else {}

    sources = []
    unchanged: set[int] = set()  # id() of the sources taken from ``previous`` as they were
    cross = _CrossFile()
    connectors_dir = root / CONNECTORS_DIR
    files = (sorted([p for pattern in CONNECTOR_FILES for p in connectors_dir.glob(pattern)], key=str)
             if connectors_dir.is_dir() else [])
    for path in files:
        kept = _reusable(reusable, collector, path, reuse)
        if kept is not None and kept.source_id not in cross.ids:  # as read before: only the checks across files
            unchanged.add(id(kept))
            cross.ids[kept.source_id] = kept.connector_file
            _check_ingestion(collector, kept.connector, platform, kept.connector_file, kept.connector_map, cross)
            sources.append(kept)
            continue
        source = _read_source(collector, path, platform, platform_map if platform is not None else None, cross,
                              stamps)
        if source is not None:
            sources.append(source)

    if platform is not None:  # issue 12: the serving blocks (reconciler/serving.py)
        from reconciler import serving

        serving.check(collector, platform, platform_map, sources)
    if platform is not None:  # issue 13: governance settings across files (reconciler/governance.py)
        from reconciler import governance

        governance.check(collector, platform, platform_map, sources, unchanged)
    compiled = checked = None
    if platform is not None:
        checked = DesiredState(root, platform, tuple(sources), platform_map=platform_map)
        compiled = _check_compiled(collector, checked, previous, [s for s in sources if id(s) not in unchanged])
    if collector.problems or platform is None:
        raise InvalidDesiredState(collector.problems)
    return _loaded(checked, compiled, stamps, loaded_at_ns, _Index(boundary, cross))


def _check_compiled(collector: _Collector, checked: DesiredState, previous: DesiredState | None,
                    sources: list[Source], joins=None, by_id=None, changes=None) -> tuple[Any, ...] | None:
    """GCP's limits on what compile builds (`reconciler.limits`), with the file and line of the
    setting that exceeds them; compiled with ``previous``'s memo (and ``changes``: which of its
    sources went and came, when known). What compile reused unchanged was checked when it was
    made (the previous load passed), and so were the settings of every source but ``sources``.
    The compiled resources (None when compile failed on a state whose problems are already found:
    those come first)."""
    from reconciler.compile import compile_resources, made_anew
    from reconciler.limits import compiled_problems

    try:
        compiled = tuple(compile_resources(checked, previous=previous, changes=changes))
        fresh = made_anew(checked)
        collector.problems += compiled_problems(checked, compiled if fresh is None else fresh, sources, joins, by_id)
        return compiled
    except Exception:
        if not collector.problems:
            raise
        return None


def _loaded(checked: DesiredState, compiled: tuple[Any, ...] | None, stamps: dict[str, Any], loaded_at_ns: int,
            index: _Index) -> DesiredState:
    """The state loaded: ``checked`` (compiled) with its revision and what the next load reuses."""
    state = DesiredState(root=checked.root, platform=checked.platform, sources=checked.sources,
                         revision=git_revision(checked.root), platform_map=checked.platform_map)
    object.__setattr__(state, "_compiled", compiled)  # compile reads only the platform and the sources
    object.__setattr__(state, "_compile_memo", checked._compile_memo)
    object.__setattr__(state, "_stamps", stamps)
    object.__setattr__(state, "_loaded_at_ns", loaded_at_ns)
    object.__setattr__(state, "_index", index)
    return state


def _read_source(collector: _Collector, path: Path, platform: Platform | None, platform_map: SourceMap | None,
                 cross: _CrossFile, stamps: dict[str, Any]) -> Source | None:
    """The `Source` of connector file ``path``, read and checked (its schema too, stamped in
    ``stamps``); None when it has a problem that leaves no source (all of them to ``collector``)."""
    loaded = collector.load(path, load_yaml, Connector, precheck=connector_precheck)
    if not loaded:
        return None
    connector, source_map = loaded
    rel = collector.rel(path)
    where = source_map.find(("source_id",))
    if path.stem != connector.source_id:
        collector.add(rel, where, "source_id",
                      f"source_id {connector.source_id!r} does not match the file name {path.name!r} "
                      f"(expected connectors/{connector.source_id}.yaml)")
    duplicate = connector.source_id in cross.ids
    if duplicate:
        collector.add(rel, where, "source_id",
                      f"duplicate source_id {connector.source_id!r}: also declared in {cross.ids[connector.source_id]}")
    else:
        cross.ids[connector.source_id] = rel
        _check_ingestion(collector, connector, platform, rel, source_map, cross)
    if connector.ingestion.pattern == "database_cdc":  # issue 10: its tables' schemas (reconciler/cdc.py)
        from reconciler import cdc

        tables = cdc.load_tables(collector, connector, platform, rel, source_map, cross.cdc_tables)
        if tables is None or duplicate:
            return None
        refs = _secret_refs(connector, rel, source_map) + cdc.secret_refs(connector, platform, platform_map)
        return Source(connector, None, rel, "", refs, connector_map=source_map, tables=tables)
    # Checked even when something above is wrong: one problem must not hide the others.
    schema_result = _load_schema(collector, connector, rel, source_map)
    if not schema_result:
        return None
    schema, schema_rel, schema_map = schema_result
    stamps.setdefault(str(collector.root / schema_rel), FileStamp.of(collector.root / schema_rel))  # for the next load
    _check_fields(collector, connector, schema, rel, source_map)
    _check_table_limits(collector, schema, schema_rel, schema_map)
    if schema.primary_key is not None:  # issue 10: a database_cdc table's key, nothing here
        collector.add(schema_rel, schema_map.find(("primary_key",)), "primary_key",
                      "primary_key applies to the schema of a database_cdc source's table; this source's "
                      "records are de-duplicated by processing.bronze_to_silver[].deduplication.key")
    if duplicate:
        return None
    return Source(connector, schema, rel, schema_rel, _secret_refs(connector, rel, source_map),
                  connector_map=source_map, schema_map=schema_map)


def _reusable(reusable: dict[str, Source], collector: _Collector, path: Path, reuse: _Reuse) -> Source | None:
    """The previous load's `Source` of connector file ``path`` when neither it nor its schema
    file changed (`FileStamp`: neither is a symbolic link either), else None."""
    connector_unchanged = reuse.unchanged(path)  # stamped whatever happens next
    source = reusable.get(collector.rel(path))
    if source is None or not connector_unchanged:
        return None
    return source if reuse.unchanged(f"{collector.root}{os.sep}{source.schema_file}") else None


# --------------------------------------------------------------------------- a commit, where it changed


@dataclass(frozen=True)
class _Index:
    """What the checks across files know of a loaded state's sources, kept with the state so that
    the next git-mode load updates it for the files a commit changed (`_load_changed`) instead of
    making it again from every source. A load that lists every file (`_load_all`) keeps the
    registries it filled (``cross``); the rest is made from the state by the first git-mode load
    that needs it (`completed`), so that a load from scratch does not pay for it."""

    boundary: Path  # the ``within`` of the load
    cross: _CrossFile
    serving: Any = None  # reconciler.serving.CheckIndex
    joins: dict[str, list[tuple[Source, int]]] | None = None  # reconciler.limits.joins_of
    by_id: dict[str, Source] | None = None
    schema_owner: dict[str, str] | None = None  # schema file -> the connector file naming it
    # Connector files every load reads again: database_cdc sources (their tables' schema files are
    # not stamped) and sources with a file that is not a regular one (a symbolic link: `FileStamp`).
    reread: frozenset[str] = frozenset()
    dirs: frozenset[str] = frozenset()  # the directories of the sources' files (relative), and connectors/
    ancestors: frozenset[str] = frozenset()  # those directories and every directory above them, up to the root

    def completed(self, state: DesiredState) -> _Index:
        """This index with what is made from ``state`` (the state it was kept with)."""
        if self.serving is not None:
            return self
        from reconciler import serving
        from reconciler.compile import zone_names
        from reconciler.limits import joins_of

        root, stamps = state.root, state._stamps
        return _Index(self.boundary, self.cross, serving.CheckIndex.of(zone_names(state.platform), state.sources),
                      joins_of(state.sources), {s.source_id: s for s in state.sources},
                      {s.schema_file: s.connector_file for s in state.sources if s.schema_file},
                      frozenset(s.connector_file for s in state.sources if _reread(root, s, stamps)),
                      *_directories({CONNECTORS_DIR}, state.sources))

    def updated(self, state: DesiredState, cross: _CrossFile, serving: Any, old: list[Source],
                new: list[Source], stamps: dict[str, Any]) -> _Index:
        """The index of ``state``: this one's with the sources ``old`` replaced by ``new``."""
        from reconciler.limits import joins_updated

        by_id, schema_owner, reread = dict(self.by_id), dict(self.schema_owner), set(self.reread)
        for source in old:
            by_id.pop(source.source_id, None)
            schema_owner.pop(source.schema_file, None)
            reread.discard(source.connector_file)
        for source in new:
            by_id[source.source_id] = source
            if source.schema_file:
                schema_owner[source.schema_file] = source.connector_file
            if _reread(state.root, source, stamps):
                reread.add(source.connector_file)
        return _Index(self.boundary, cross, serving, joins_updated(self.joins, old, new), by_id, schema_owner,
                      frozenset(reread), *_directories(self.dirs, new))


def _reread(root: Path, source: Source, stamps: dict[str, Any]) -> bool:
    """``source`` is read by every load (`_Index.reread`)."""
    files = (source.connector_file, source.schema_file) if source.schema_file else (source.connector_file,)
    return bool(source.tables) or any(stamps.get(f"{root}{os.sep}{file}") is None for file in files)


def _directories(dirs: Iterable[str], sources: Iterable[Source]) -> tuple[frozenset[str], frozenset[str]]:
    """``dirs`` and the directories of ``sources``' files; the same with all above them (`_Index`)."""
    found = set(dirs)
    for source in sources:
        found.add(os.path.dirname(source.connector_file))
        if source.schema_file:
            found.add(os.path.dirname(source.schema_file))
    above = set()
    for folder in found:
        while folder and folder not in above:
            above.add(folder)
            folder = os.path.dirname(folder)
    return frozenset(found), frozenset(above)


def _load_changed(root: Path, boundary: Path, previous: DesiredState, changed: Iterable[str],
                  loaded_at_ns: int) -> DesiredState | None:
    """A commit loaded in time that grows with what it changed, not with the number of sources
    (issue 14: the daemon's load of each new revision, `load_repo` with ``previous`` and
    ``changed``); None where `_load_all` must tell.

    The connector files are ``previous``'s sources' files, less those git says are gone, plus
    those it names that exist now: a file git does not name is as it was (a forced, clean
    checkout). Read again: the connector files git names, those whose schema file it names, and
    those every load reads (`_Index.reread`). The checks across files then run for those only,
    against what ``previous``'s index knows of the others (``previous`` passed every check, so
    nothing among the others alone can fail): the same code checks them as in `_load_all`.

    None - `_load_all` then lists and checks everything - when the platform changed, when a
    directory on the way to the sources' files is a symbolic link or changed (git names a file
    behind a link by its target), when something under connectors/ is not a connector file, and
    on any problem: a failed load reports every problem as a load from scratch does, and which
    file of two is named first depends on all the files.
    """
    if previous._index.boundary != boundary:
        return None
    index = previous._index.completed(previous)
    prefix = f"{root}{os.sep}"
    read: set[str] = set(index.reread)  # connector files, relative to the root
    gone: set[str] = set()
    for name in changed:
        path = os.path.join(boundary, name)
        if not path.startswith(prefix):
            continue  # outside the desired state
        rel = path[len(prefix):]
        folder, file = os.path.split(rel)
        if rel == PLATFORM_FILE or rel in index.ancestors:
            return None  # every source is checked against a new platform; a directory became a file or link
        if folder == CONNECTORS_DIR and any(fnmatch.fnmatchcase(file, pattern) for pattern in CONNECTOR_FILES):
            (read if os.path.lexists(path) else gone).add(rel)
        elif rel.startswith(CONNECTORS_DIR + os.sep):
            return None  # (a directory named like a connector file: the listing would find it)
        elif rel in index.schema_owner:
            read.add(index.schema_owner[rel])
    read -= gone
    for folder in index.dirs:  # a linked directory: git names what is behind it by the target's path
        where = os.path.join(root, folder)
        if os.path.realpath(where) != where:
            return None

    platform, platform_map = previous.platform, previous.platform_map
    sources = list(previous.sources)  # sorted by connector file, as `_load_all` lists them
    old = [sources[i] for i in (_position(sources, rel) for rel in sorted(read | gone)) if i is not None]
    stamps = dict(previous._stamps)
    for source in old:
        del sources[_position(sources, source.connector_file)]
        for file in (source.connector_file, source.schema_file):
            stamps.pop(f"{prefix}{file}", None)
    collector = _Collector(root, boundary)
    cross = index.cross.without(old, platform)
    new = []
    for rel in sorted(read):
        stamps[f"{prefix}{rel}"] = FileStamp.of(f"{prefix}{rel}")
        source = _read_source(collector, root / rel, platform, platform_map, cross, stamps)
        if source is None:
            return None
        new.append(source)
        sources.insert(bisect.bisect_left(sources, rel, key=_connector_file), source)
    if collector.problems:
        return None

    from reconciler import governance, serving

    serving_index = serving.check_changed(collector, platform, index.serving, old, new)
    if serving_index is None:
        return None
    governance.check(collector, platform, platform_map, new)
    checked = DesiredState(root, platform, tuple(sources), platform_map=platform_map)
    updated = index.updated(checked, cross, serving_index, old, new, stamps)
    compiled = _check_compiled(collector, checked, previous, new, updated.joins, updated.by_id, (old, new))
    if collector.problems or compiled is None:
        return None
    return _loaded(checked, compiled, stamps, loaded_at_ns, updated)


def _connector_file(source: Source) -> str:
    return source.connector_file


def _position(sources: list[Source], connector_file: str) -> int | None:
    """Where the source of ``connector_file`` is in ``sources`` (sorted by connector file)."""
    i = bisect.bisect_left(sources, connector_file, key=_connector_file)
    return i if i < len(sources) and sources[i].connector_file == connector_file else None


def git_revision(root: Path) -> str | None:
    """The full commit SHA checked out at ``root``, if it is inside a git work tree."""
    try:
        import git

        return git.Repo(root, search_parent_directories=True).head.commit.hexsha
    except Exception:  # noqa: BLE001 - not a repo, no commits yet, or git missing: no revision
        return None


def _load_schema(collector: _Collector, connector: Connector, rel: str, source_map: SourceMap):
    """The connector's schema, its file and source map; None (reported) when it cannot be read.

    A schema whose ``source_id`` differs is reported and still returned, so that the
    connector's fields are checked against it too."""
    where = source_map.find(("schema", "file"))
    if connector.schema_ is None or connector.schema_.file is None:
        collector.add(rel, where, "schema.file" if connector.schema_ else "schema", "required field is missing")
        return None
    relative = connector.schema_.file
    # Lexically inside the desired-state directory; symbolic links are the reader's to check.
    path = Path(os.path.normpath(collector.root / relative))
    if Path(relative).is_absolute() or not path.is_relative_to(collector.root):
        collector.add(rel, where, "schema.file", f"{naming.shown(relative)} points outside the repository; "
                      "schema files must live inside it (e.g. schemas/<source_id>.json)")
        return None
    if not os.path.lexists(path):
        collector.add(rel, where, "schema.file", f"schema file {naming.shown(relative)} does not exist")
        return None
    loaded = collector.load(path, load_json, SourceSchema)
    if not loaded:
        return None
    schema, schema_map = loaded
    schema_rel = collector.rel(path)
    if schema.source_id != connector.source_id:
        collector.add(schema_rel, schema_map.find(("source_id",)), "source_id",
                      f"schema source_id {schema.source_id!r} does not match connector {connector.source_id!r} ({rel})")
    return schema, schema_rel, schema_map


# BigQuery's limits on a table's schema (https://cloud.google.com/bigquery/quotas#standard_tables):
# 10,000 columns, nested and repeated ones included, and RECORD fields nested 15 levels deep.
MAX_TABLE_COLUMNS = 10_000
MAX_RECORD_DEPTH = 15


def _check_table_limits(collector: _Collector, schema: SourceSchema, schema_rel: str, smap: SourceMap) -> None:
    """The Silver table is the schema's fields plus headwater's metadata columns: both count."""
    from reconciler.compile import INGESTION_METADATA

    def walk(fields, loc: tuple, depth: int) -> int:
        count = 0
        for index, item in enumerate(fields):
            count += 1
            if item.fields:
                if depth + 1 > MAX_RECORD_DEPTH:
                    here = (*loc, index, "fields")
                    collector.add(schema_rel, smap.find(here), _dotted(here),
                                  f"RECORD {item.name!r} makes {depth + 1} levels of nested RECORDs; BigQuery allows "
                                  f"{MAX_RECORD_DEPTH}")
                    return count
                count += walk(item.fields, (*loc, index, "fields"), depth + 1)
        return count

    columns = walk(schema.fields, ("fields",), 0)
    own = len(INGESTION_METADATA)
    if columns + own > MAX_TABLE_COLUMNS:
        collector.add(schema_rel, smap.find(("fields",)), "fields",
                      f"{columns} columns (nested ones included) plus headwater's {own} metadata columns "
                      f"({', '.join(c['name'] for c in INGESTION_METADATA)}) make {columns + own}; a BigQuery "
                      f"table allows {MAX_TABLE_COLUMNS}: at most {MAX_TABLE_COLUMNS - own} of its own")


def _check_fields(collector: _Collector, connector: Connector, schema: SourceSchema, rel: str, smap: SourceMap):
    """Every field named by processing, partitioning or clustering must exist in the schema."""

    def need(loc: tuple, name: str, what: str, types_allowed: set[str] | None = None, top_level=False) -> None:
        found = schema.find(name)
        if found is None or (top_level and "." in name):
            names = [f.name for f in schema.fields]
            hint = _did_you_mean(name, names)
            collector.add(rel, smap.find(loc), _dotted(loc),
                          f"{what} {naming.shown(name)} is not a field of {connector.schema_.file}{hint}")
            return
        if types_allowed is not None and (found.type not in types_allowed or found.mode == "REPEATED"):
            collector.add(rel, smap.find(loc), _dotted(loc),
                          f"{what} {name!r} has type {found.type} ({found.mode}); "
                          f"allowed: {', '.join(sorted(types_allowed))}, not REPEATED")

    for i, step in enumerate(connector.processing.bronze_to_silver):
        if step.deduplication:
            for j, key in enumerate(step.deduplication.key):
                need(("processing", "bronze_to_silver", i, "deduplication", "key", j), key, "deduplication key")
        if step.data_quality:
            for j, rule in enumerate(step.data_quality.rules):
                need(("processing", "bronze_to_silver", i, "data_quality", "rules", j, "field"), rule.field,
                     "data_quality field")
    cursor_field = getattr(connector.ingestion, "cursor_field", None)
    if cursor_field is not None:
        need(("ingestion", "cursor_field"), cursor_field, "cursor_field", PARTITION_TYPES | {"INT64", "INTEGER", "STRING"})
    silver = connector.silver
    if silver.partition_field is not None:
        need(("silver", "partition_field"), silver.partition_field, "partition field", PARTITION_TYPES, True)
    for j, name in enumerate(silver.cluster_by):
        need(("silver", "cluster_by", j), name, "cluster field", CLUSTER_TYPES, True)
    for i, step in enumerate(connector.processing.silver_to_gold):
        if step.join:
            for name in [step.join.on] if isinstance(step.join.on, str) else step.join.on:
                need(("processing", "silver_to_gold", i, "join", "on"), name, "join field")
        if step.aggregate:
            for j, name in enumerate(step.aggregate.group_by):
                if name != DERIVED_DATE:
                    need(("processing", "silver_to_gold", i, "aggregate", "group_by", j), name, "group_by field",
                         CLUSTER_TYPES | {"FLOAT64", "FLOAT"}, True)
            for j, metric in enumerate(step.aggregate.metrics):
                _fn, arg, _alias = parse_metric(metric)
                if arg != "*":
                    need(("processing", "silver_to_gold", i, "aggregate", "metrics", j), arg, "metric field",
                         None, True)


def _secret_refs(connector: Connector, rel: str, smap: SourceMap) -> tuple[SecretRef, ...]:
    refs = []
    for loc in (("ingestion", "secret_name"), ("ingestion", "signature", "secret_name"),
                ("ingestion", "credentials_secret")):  # cloud_transfer
        value: Any = connector.ingestion
        for part in loc[1:]:
            value = getattr(value, part, None)
        if isinstance(value, str):
            line, column = smap.find(loc)
            refs.append(SecretRef(value, rel, line, column, _dotted(loc)))
    return tuple(refs)


@functools.cache
def _ingestion_keys() -> list[str]:  # asked for every connector file: the models do not change
    from reconciler.config import BatchFile, CloudTransfer, DatabaseCdc, EventStreaming, StreamingApi

    keys: list[str] = []
    for model in (BatchFile, StreamingApi, DatabaseCdc, CloudTransfer, EventStreaming):
        keys.extend(k for k in model.model_fields if k not in keys)
    return keys


def flat_form_problem(data: dict, smap: SourceMap) -> tuple[tuple, str, str] | None:
    """The platform design's examples write a pattern's settings at the top level (``pattern:``,
    ``schedule:``, ``schema_file:``...); headwater nests them under ``ingestion:`` and ``schema:``.
    Such a file gets one error carrying the exact nested rewrite, instead of a "did you mean" per key."""
    import yaml

    ingestion_keys = _ingestion_keys()
    flat = [key for key in data if key in ingestion_keys or key == "schema_file"]
    if not flat:
        return None
    rewritten: dict[str, Any] = {}
    for key, value in data.items():
        if key in ingestion_keys:
            rewritten.setdefault("ingestion", dict(data.get("ingestion") or {}))[key] = value
        elif key == "schema_file":
            rewritten["schema"] = {**(data.get("schema") or {}), "file": value}
        elif key in ("ingestion", "schema"):
            rewritten.setdefault(key, {}).update(value if isinstance(value, dict) else {})
        else:
            rewritten[key] = value
    text = yaml.safe_dump(rewritten, sort_keys=False, default_flow_style=False, allow_unicode=True)
    moved = ", ".join(flat)
    return ((flat[0],), flat[0],
            f"this is the platform design's flat form ({moved} at the top level); headwater nests a "
            "pattern's settings under 'ingestion:' and the schema file under 'schema: {file: ...}'. "
            "Rewrite the file as:\n" + "\n".join("    " + line for line in text.rstrip().splitlines()))


def connector_precheck(data: dict, smap: SourceMap) -> tuple[tuple, str, str] | None:
    """What is reported alone, before the model: the flat form; cloud key material (issue 10)."""
    from reconciler import transfer

    flat = flat_form_problem(data, smap)
    if flat:
        return flat
    found = transfer.credential_problem(data)
    if found:
        return found[0], _dotted(found[0]), found[1]
    return platform_precheck(data, smap)  # a password in plain text (issue 10)


def platform_precheck(data: dict, smap: SourceMap) -> tuple[tuple, str, str] | None:
    """A password written in plain text (database_cdc's connection profiles live in platform.yaml):
    reported alone, with the Secret Manager way to write it, before the model says anything."""
    from reconciler import cdc

    found = cdc.password_problem(data)
    return (found[0], _dotted(found[0]), found[1]) if found else None


CLOUD_RUN_NAME_MAX = 49  # Cloud Run service ids: at most 49 characters


def _check_ingestion(collector: _Collector, connector: Connector, platform: Platform | None, rel: str,
                     smap: SourceMap, cross: _CrossFile) -> None:
    """What one connector's ingestion derives that must fit the platform and the other sources
    (those checked before it: ``cross``, which takes this one's webhook path and landing prefix)."""
    from reconciler.compile import connector_service_name, notification_prefix, zone_names

    ingestion = connector.ingestion
    if ingestion.pattern == "streaming_api":
        service = connector_service_name(connector.source_id)
        if len(service) > CLOUD_RUN_NAME_MAX:
            collector.add(rel, smap.find(("source_id",)), "source_id",
                          f"the connector's Cloud Run service {service!r} would be {len(service)} characters; "
                          f"Cloud Run allows {CLOUD_RUN_NAME_MAX}: use a source_id of at most "
                          f"{CLOUD_RUN_NAME_MAX - len('-connector')} characters")
        path = _webhook_path(connector)
        if path in cross.webhook_paths:
            collector.add(rel, smap.find(("ingestion", "webhook_path")), "ingestion.webhook_path",
                          f"webhook_path {ingestion.webhook_path!r} is already the path of "
                          f"{cross.webhook_paths[path]}; each webhook source needs its own path")
        elif path is not None:
            cross.webhook_paths[path] = rel
    if ingestion.pattern == "cloud_transfer":  # issue 10: Storage Transfer (reconciler/transfer.py)
        from reconciler import transfer

        landing = zone_names(platform).buckets["landing"] if platform is not None else None
        for loc, message in transfer.source_problems(ingestion, landing, connector.source_id):
            collector.add(rel, smap.find(loc), _dotted(loc), message)
    prefix = _landing_prefix(connector, platform)
    if prefix is not None:
        # Two sources on one landing prefix (or one inside the other) would ingest each other's
        # files, and share one notification (issue 10).
        seen = cross.landing_prefixes
        key = "destination" if ingestion.pattern == "cloud_transfer" else "location"
        loc = ("ingestion", key) if getattr(ingestion, key) else ("ingestion", "pattern")
        for (bucket, other), owner in seen.items():
            if bucket == prefix[0] and (other.startswith(prefix[1]) or prefix[1].startswith(other)):
                collector.add(rel, smap.find(loc), _dotted(loc),
                              f"the landing prefix gs://{prefix[0]}/{prefix[1]} overlaps {owner}'s "
                              f"gs://{bucket}/{other}: the two sources would ingest each other's files; give each "
                              "its own prefix")
                break
        else:
            seen[prefix] = rel
    if ingestion.pattern == "database_cdc":  # issue 10: Datastream (reconciler/cdc.py)
        from reconciler import cdc

        for loc, message in cdc.source_problems(connector, platform):
            collector.add(rel, smap.find(loc), _dotted(loc), message)
    if ingestion.pattern == "batch_file" and ingestion.location and platform is not None:
        landing = zone_names(platform).buckets["landing"]
        bucket, _prefix = notification_prefix(ingestion.location)
        if bucket != landing:
            collector.add(rel, smap.find(("ingestion", "location")), "ingestion.location",
                          f"{ingestion.location!r} is outside the landing bucket {landing!r}: file-arrival "
                          f"events and the ingestion claims live there (use gs://{landing}/{connector.source_id}/, "
                          "or a cloud_transfer source to bring files from another bucket)")


def _webhook_path(connector: Connector) -> str | None:
    """The path a webhook source answers on (None: not a webhook source)."""
    ingestion = connector.ingestion
    if ingestion.pattern == "streaming_api" and ingestion.connector_type == "webhook":
        return ingestion.webhook_path.rstrip("/") or "/"
    return None


def _landing_prefix(connector: Connector, platform: Platform | None) -> tuple[str, str] | None:
    """(bucket, prefix) a batch_file or cloud_transfer source takes its files from (None: another pattern)."""
    if connector.ingestion.pattern not in ("batch_file", "cloud_transfer") or platform is None:
        return None
    from reconciler.compile import landing_location, notification_prefix, zone_names

    return notification_prefix(landing_location(zone_names(platform), connector))


def _check_platform_names(collector: _Collector, platform: Platform, smap: SourceMap) -> None:
    """Names headwater derives from platform.yaml must be valid GCP names too."""
    from reconciler.compile import zone_names

    names = zone_names(platform)
    for zone, bucket in names.buckets.items():
        problem = naming.bucket_problem(bucket)
        if problem:
            declared = getattr(platform.zones, zone).bucket is not None
            loc = ("zones", zone, "bucket") if declared else ("project",)
            extra = "" if declared else f" (derived as {zone}-<project>-<region>; set zones.{zone}.bucket)"
            collector.add(PLATFORM_FILE, smap.find(loc), _dotted(loc), problem + extra)
    for zone, dataset in names.datasets.items():
        problem = naming.dataset_problem(dataset)
        if problem:
            loc = ("zones", zone, "dataset")
            collector.add(PLATFORM_FILE, smap.find(loc), _dotted(loc), problem)


# --------------------------------------------------------------------------- error formatting


def _other_union_member(error: dict, data: Any) -> bool:
    """An error of a union member the value is plainly not: ``signature: {header: ...}`` also fails
    the ``'none'`` member of ``Signature | Literal['none']``, which says nothing useful. Such an
    error is dropped when the value is a mapping (the mapping's member reports what is wrong)."""
    if error["type"] != "literal_error":
        return False
    value: Any = data
    for part in _data_loc(data, error["loc"]):
        value = value.get(part) if isinstance(value, dict) else (
            value[part] if isinstance(value, list) and isinstance(part, int) and part < len(value) else None)
    return isinstance(value, dict)


def _data_loc(data: Any, loc: tuple) -> tuple:
    """Pydantic's error location, minus the parts that are not in the document.

    Pydantic adds discriminator tags (``ingestion.batch_file.schedule``) and union member names
    (``on.str``) to locations; the user's file has neither.
    """
    result: list = []
    current = data
    for index, part in enumerate(loc):
        last = index == len(loc) - 1
        if isinstance(current, dict) and part in current:
            current = current[part]
            result.append(part)
        elif isinstance(current, list) and isinstance(part, int) and 0 <= part < len(current):
            current = current[part]
            result.append(part)
        elif last and isinstance(current, dict) and not _is_member_tag(part):
            result.append(part)  # a missing or unknown key: name it
        # else: a tag or union member name that the document does not contain
    return tuple(result)


def _is_member_tag(part: Any) -> bool:
    """Pydantic's names for union members and validators (``literal['none']``,
    ``function-after[_tolerance(), Signature]``): never keys of the user's document."""
    return isinstance(part, str) and ("[" in part or part.startswith("function-"))


def _dotted(loc: tuple) -> str:
    text = ""
    for part in loc:
        if not isinstance(part, int) and (len(str(part)) > 64 or naming.looks_like_a_secret(str(part))):
            part = str(part)[:naming.SHOWN_PREFIX_CHARS] + "…"  # a key that is a pasted credential
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _message(error: dict, model: type[BaseModel], data: Any, loc: tuple) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(model, data, loc[:-1])
        return f"unknown key {naming.shown(loc[-1])}{_did_you_mean(str(loc[-1]), allowed)}"
    if kind == "missing":
        return "required field is missing"
    if kind == "bool_type":  # a StrictBool (issue 13's governance switches): no "yes"/1 coerced to true
        value = error.get("input")
        quoted = naming.shown(value) if isinstance(value, str) else repr(value)
        return f"{quoted} is not a boolean: write true or false"
    message = error["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            message = message[len(prefix):]
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        message = f"unknown or missing ingestion pattern; expected one of: {', '.join(INGESTION_PATTERNS)}"
    return message


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _allowed_keys(model: type[BaseModel], data: Any, loc: tuple) -> list[str]:
    target = _model_at(model, data, loc)
    if target is None:
        return []
    return [info.alias or name for name, info in target.model_fields.items()]


def _model_at(model: Any, data: Any, loc: tuple) -> type[BaseModel] | None:
    """The pydantic model class that describes the mapping at ``loc`` of ``data``."""
    current_type, current_data = model, data
    for part in loc:
        current_type = _concrete(current_type, current_data)
        if isinstance(current_type, type) and issubclass(current_type, BaseModel):
            info = next((f for n, f in current_type.model_fields.items() if (f.alias or n) == part), None)
            if info is None:
                return None
            current_type = info.annotation
        elif typing.get_origin(current_type) is list and isinstance(part, int):
            current_type = typing.get_args(current_type)[0]
        elif typing.get_origin(current_type) is dict:
            current_type = typing.get_args(current_type)[1]
        else:
            return None
        current_data = current_data[part] if isinstance(current_data, dict | list) else None
    current_type = _concrete(current_type, current_data)
    return current_type if isinstance(current_type, type) and issubclass(current_type, BaseModel) else None


def _concrete(tp: Any, data: Any) -> Any:
    """Unwrap Annotated and Optional; pick the union member matching ``data['pattern']``."""
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
            continue
        if origin in (typing.Union, types.UnionType):
            members = [m for m in typing.get_args(tp) if m is not type(None)]
            models = [m for m in members if isinstance(m, type) and issubclass(m, BaseModel)]
            if len(members) == 1:
                tp = members[0]
                continue
            if models and isinstance(data, dict):
                for member in models:
                    tag = member.model_fields.get("pattern")
                    if tag and data.get("pattern") in typing.get_args(tag.annotation):
                        return member
            return models[0] if len(models) == 1 else tp
        return tp


def _kind(value: Any) -> str:
    return "nothing (empty file)" if value is None else type(value).__name__
