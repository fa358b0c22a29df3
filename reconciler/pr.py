"""Pull-request dry run: what a PR changes in the desired state, in reviewers' terms.

``headwater plan --repo . --base origin/main --format markdown`` prints this summary, then the
plan of the checked-out head against live state. The plan says which GCP resources change; this
summary says *why*, in the files people edited: sources added, changed (which settings, which
schema columns) and removed, and platform settings changed.

The base side is the merge base of ``--base`` and ``HEAD`` (what the PR branched from, as
GitHub's "Files changed" tab does), falling back to ``--base`` itself when there is none. It is
read straight from git objects into a temporary directory and validated with the same loader as
everything else; the head side is the desired state the plan was computed from (the work tree).

The Markdown starts with `MARKER`, a hidden HTML comment: the CI job finds its own earlier
comment by it and updates that one instead of adding a new comment on every push.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import git
import gitdb.exc

from reconciler import schema_evolution
from reconciler.compile import canonical_schema
from reconciler.load import DesiredState, InvalidDesiredState, Source, load_repo
from reconciler.plan import FieldDiff, field_diffs

MARKER = "<!-- headwater-plan -->"


@dataclass(frozen=True)
class SourceChange:
    source_id: str
    status: str  # added | removed | changed
    pattern: str
    settings: tuple[FieldDiff, ...] = ()
    columns: tuple[str, ...] = ()  # "+name (TYPE, MODE)", "-name", "~name: TYPE → TYPE", + why if incompatible
    suspended: bool = False


@dataclass(frozen=True)
class PrSummary:
    base_ref: str
    base_revision: str | None
    head_revision: str | None
    sources: tuple[SourceChange, ...] = ()
    platform: tuple[FieldDiff, ...] = ()
    base_error: str | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def empty(self) -> bool:
        return not self.sources and not self.platform and not self.base_error


def summary(state: DesiredState, base_ref: str, fmt: str) -> str:
    """The rendered summary to print before the plan ("" for JSON, which must stay one document)."""
    if fmt == "json":
        return ""
    result = summarize(state, base_ref)
    return render_markdown(result) if fmt == "markdown" else render_text(result)


def summarize(state: DesiredState, base_ref: str) -> PrSummary:
    try:
        repo = git.Repo(state.root, search_parent_directories=True)
        base_commit = _base_commit(repo, base_ref)
    except (git.GitError, gitdb.exc.BadName, ValueError) as exc:
        # E.g. a shallow CI checkout that never fetched the base branch: say so, and still plan.
        return PrSummary(base_ref, None, state.revision,
                         base_error=f"cannot resolve {base_ref!r} ({type(exc).__name__}: {_first_line(exc)}); "
                                    "fetch it first (e.g. actions/checkout with fetch-depth: 0)")
    subdir = Path(state.root).resolve().relative_to(Path(repo.working_tree_dir).resolve())
    with tempfile.TemporaryDirectory(prefix="headwater-base-") as tmp:
        present = _export(base_commit, subdir, Path(tmp))
        if not present:
            return _compare(base_ref, base_commit.hexsha, None, state)
        try:
            base = load_repo(tmp)
        except InvalidDesiredState as exc:
            return PrSummary(base_ref, base_commit.hexsha, state.revision,
                             base_error=f"the base revision is not valid ({len(exc.problems)} problems); "
                                        "showing the head's plan only")
    return _compare(base_ref, base_commit.hexsha, base, state)


# ---------------------------------------------------------------------- comparison


def _compare(base_ref: str, base_revision: str, base: DesiredState | None, head: DesiredState) -> PrSummary:
    before = {s.source_id: s for s in base.sources} if base else {}
    after = {s.source_id: s for s in head.sources}
    changes = []
    for source_id in sorted(before.keys() | after.keys()):
        old, new = before.get(source_id), after.get(source_id)
        if old is None:
            changes.append(SourceChange(source_id, "added", _pattern(new), suspended=new.connector.suspend))
        elif new is None:
            changes.append(SourceChange(source_id, "removed", _pattern(old)))
        else:
            settings = tuple(_diff(_dump(old.connector), _dump(new.connector)))
            columns = tuple(_column_changes(old, new))
            if settings or columns:
                changes.append(SourceChange(source_id, "changed", _pattern(new), settings, columns,
                                            new.connector.suspend))
    platform = tuple(_diff(_dump(base.platform), _dump(head.platform))) if base else ()
    notes = ()
    if base is None:
        notes = ("the base revision has no desired state here: every source is new",)
    return PrSummary(base_ref, base_revision, head.revision, tuple(changes), platform, notes=notes)


def _dump(model: Any) -> Any:
    return model.model_dump(mode="json", by_alias=True, exclude_defaults=False)


def _pattern(source: Source) -> str:
    return source.connector.ingestion.pattern


def _diff(before: dict[str, Any], after: dict[str, Any]) -> list[FieldDiff]:
    """Leaf-level differences between two config documents, with the plan's own differ."""
    return [diff for key in sorted(before.keys() | after.keys())
            for diff in field_diffs(key, before.get(key), after.get(key))]


def _column_changes(old: Source, new: Source) -> list[str]:
    """Schema column changes as the plan will judge them (`schema_evolution`), descriptions aside.
    A database_cdc source's tables each have their schema: their changes are prefixed ``<table>.``."""
    pairs = [("", old.schema, new.schema)] if old.schema is not None and new.schema is not None else []
    old_tables = {t.key: t.schema for t in old.tables}  # database_cdc (issue 10)
    pairs += [(f"{t.key}.", old_tables[t.key], t.schema) for t in new.tables if t.key in old_tables]
    lines = []
    for prefix, before, after in pairs:
        for change in schema_evolution.compare(canonical_schema(before.fields), canonical_schema(after.fields)):
            if change.change == schema_evolution.DESCRIPTION:
                continue
            path = prefix + change.path
            if change.change == schema_evolution.ADDED:
                line = f"+{path} ({change.after})"
            elif change.change == schema_evolution.REMOVED:
                line = f"-{path}"
            else:
                line = f"~{path}: {change.before} → {change.after}"
            if not change.compatible:
                line += f" (incompatible: {change.explanation})"
            lines.append(line)
        if before.version != after.version:
            lines.append(f"{prefix}version {before.version} → {after.version}")
    lines += _classification_changes(old, new)
    return sorted(lines, key=lambda line: line.lstrip("+-~"))


def _classification_changes(old: Source, new: Source) -> list[str]:
    """Classified columns whose class changed (schema files or ``classify``; issue 13): each is an
    access change, and a removed one makes the column readable by every reader of its table."""
    from reconciler.governance import classified_columns

    def classes(source: Source) -> dict[str, str]:
        return {f"{c.table}/{c.path}" if source.tables else c.path: c.class_name
                for c in classified_columns(source, "silver")}

    before, after = classes(old), classes(new)
    lines = []
    for path in sorted(before.keys() | after.keys()):
        if before.get(path) == after.get(path):
            continue
        was, now = before.get(path, "none"), after.get(path, "none")
        line = f"~{path}: classification {was} → {now}"
        if path not in after:
            line += " (access: the column becomes readable in clear by every reader of its table)"
        lines.append(line)
    return lines


# ---------------------------------------------------------------------- git


def _base_commit(repo: git.Repo, base_ref: str) -> git.Commit:
    base = repo.commit(base_ref)
    try:
        merge_bases = repo.merge_base(base, repo.head.commit)
    except git.GitCommandError:
        merge_bases = []
    return merge_bases[0] if merge_bases else base


def _export(commit: git.Commit, subdir: Path, dest: Path) -> bool:
    """Write the files under ``subdir`` at ``commit`` into ``dest``; False if ``subdir`` is absent.

    What the loader must refuse stays refusable: a symbolic link is written as a symbolic link
    (so one pointing out of the repository is refused, not read), and a blob over the loader's
    size limit as a sparse file of its size, without reading the blob."""
    from reconciler.yamlsrc import MAX_FILE_BYTES

    try:
        tree = commit.tree if str(subdir) in ("", ".") else commit.tree / subdir.as_posix()
    except KeyError:
        return False
    for item in tree.traverse():
        if item.type != "blob":
            continue
        target = dest / Path(item.path).relative_to(subdir) if str(subdir) not in ("", ".") else dest / item.path
        target.parent.mkdir(parents=True, exist_ok=True)
        if item.mode == SYMLINK_MODE:
            os.symlink(item.data_stream.read(4096).decode("utf-8", "replace"), target)
        elif item.size > MAX_FILE_BYTES:
            with open(target, "wb") as handle:
                handle.truncate(item.size)
        else:
            target.write_bytes(item.data_stream.read())
    return True


SYMLINK_MODE = 0o120000


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# ---------------------------------------------------------------------- rendering


def _value(value: Any) -> str:
    return "(unset)" if value is None else json.dumps(value, default=str, sort_keys=True)


def _short(revision: str | None) -> str:
    return revision[:12] if revision else "working tree"


def render_markdown(s: PrSummary) -> str:
    out = [MARKER, "## headwater: what this PR changes",
           "",
           f"Base `{s.base_ref}` ({_short(s.base_revision)}) → head {_short(s.head_revision)}.", ""]
    if s.base_error:
        out += [f"> [!NOTE]\n> {s.base_error}", ""]
    for note in s.notes:
        out += [f"> [!NOTE]\n> {note}", ""]
    if s.empty:
        out += ["No changes to the desired state (sources, schemas, platform settings).", ""]
    if s.sources:
        out += ["| source | change | pattern | what |", "|---|---|---|---|"]
        for c in s.sources:
            out.append(f"| `{c.source_id}` | {_status(c)} | {c.pattern} | {_what(c)} |")
        out.append("")
    removed = [c.source_id for c in s.sources if c.status == "removed"]
    if removed:
        out += ["> [!IMPORTANT]\n> Removed sources: their resources are kept unless `policy.prune` is on, and "
                "their buckets and tables are never deleted without `--allow-destroy`. See the plan below.", ""]
    if s.platform:
        out += [f"**Platform settings changed:** {', '.join(f'`{p.path}`' for p in s.platform)}", ""]
    detailed = [c for c in s.sources if c.settings or c.columns]
    if detailed or s.platform:
        out += ["<details><summary>Changed settings, before → after</summary>", ""]
        for c in detailed:
            out.append(f"**{c.source_id}**")
            out += [f"- `{f.path}`: {_value(f.before)} → {_value(f.after)}" for f in c.settings]
            out += [f"- schema: `{line}`" for line in c.columns]
            out.append("")
        if s.platform:
            out.append("**platform.yaml**")
            out += [f"- `{f.path}`: {_value(f.before)} → {_value(f.after)}" for f in s.platform]
            out.append("")
        out += ["</details>", ""]
    out += ["---", ""]
    return "\n".join(out) + "\n"


def render_text(s: PrSummary) -> str:
    lines = [f"Desired-state changes since {s.base_ref} ({_short(s.base_revision)}):"]
    if s.base_error:
        lines.append(f"  note: {s.base_error}")
    lines += [f"  note: {n}" for n in s.notes]
    if s.empty:
        lines.append("  none")
    for c in s.sources:
        lines.append(f"  {_status(c)}: {c.source_id} ({c.pattern}){': ' + _what(c) if _what(c) else ''}")
    for f in s.platform:
        lines.append(f"  platform {f.path}: {_value(f.before)} → {_value(f.after)}")
    return "\n".join(lines) + "\n\n"


def _status(c: SourceChange) -> str:
    return c.status + (" (suspended)" if c.suspended else "")


def _what(c: SourceChange) -> str:
    parts = [f"`{f.path}`" for f in c.settings[:6]]
    if len(c.settings) > 6:
        parts.append(f"and {len(c.settings) - 6} more settings")
    columns = [line for line in c.columns if line[:1] in "+-~"]
    if columns:
        parts.append(f"schema: {len(columns)} column change{'s' if len(columns) != 1 else ''}")
    elif c.columns:
        parts.append("schema version")
    return ", ".join(parts)
