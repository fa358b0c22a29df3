"""Plan output for people (text), machines (JSON) and pull requests (Markdown).

All three render the same `Plan`; none computes anything of its own. The JSON document is
versioned (``format_version``) and carries every change with its field-level diff.
"""

from __future__ import annotations

import json
from typing import Any

from reconciler.plan import Action, Change, Plan, owner_of

# Terraform's markers; "<=" is its read, "=>" an import (taking over an existing resource).
MARKERS = {Action.CREATE: "+", Action.UPDATE: "~", Action.REPLACE: "-/+", Action.DELETE: "-", Action.IMPORT: "=>",
           Action.READ: "<="}


def render(plan: Plan, fmt: str) -> str:
    return {"text": render_text, "json": render_json, "markdown": render_markdown}[fmt](plan)


def render_json(plan: Plan) -> str:
    return json.dumps(plan.to_dict(), indent=2, sort_keys=False, default=str) + "\n"


def _value(value: Any) -> str:
    if value is None:
        return "(none)"
    return json.dumps(value, default=str, sort_keys=True)


def summary_line(plan: Plan) -> str:
    if plan.refused:
        return f"Plan refused: {plan.refused}"
    counts = plan.summary()
    if not plan.has_changes:
        line = "No changes. Live state matches the desired state."
    else:
        line = (f"Plan: {counts['create']} to create, {counts['update']} to update, "
                f"{counts['replace']} to replace, {counts['delete']} to delete.")
        if counts["import"]:
            line = line.replace("Plan: ", f"Plan: {counts['import']} to import, ", 1)
    extras = []
    if counts["blocked"]:
        extras.append(f"{counts['blocked']} blocked")
    if counts["kept"]:
        extras.append(f"{counts['kept']} kept (no longer declared; use --prune to delete)")
    return line + (" " + ", ".join(extras) + "." if extras else "")


def _header(plan: Plan) -> str:
    revision = plan.revision[:12] if plan.revision else "(not a git commit)"
    return f"headwater plan for revision {revision}"


def render_text(plan: Plan) -> str:
    lines = [_header(plan), ""]
    for change in plan.changes:
        if change.action == Action.NOOP and not change.orphan:
            continue
        lines.extend(_text_change(change))
    if len(lines) > 2:
        lines.append("")
    access = security_changes(plan)
    if access:
        lines.append(f"Access changes ({len(access)}):")
        lines += [f"  {MARKERS[c.action]:>3} {c.address}: {c.security_summary}{_blocked_note(c)}" for c in access]
        lines.append("")
    lines.append(summary_line(plan))
    return "\n".join(lines) + "\n"


def security_changes(plan: Plan) -> list[Change]:
    """The plan's changes that grant, revoke or unmask access (`Change.security`), in plan order."""
    return [c for c in plan.changes if c.security]


def _blocked_note(change: Change) -> str:
    return " (blocked)" if change.blocked else ""


def _text_change(change: Change) -> list[str]:
    if change.orphan and change.action == Action.NOOP:
        return [f"  = {change.address}  (kept: {change.reason})"]
    head = f"{MARKERS[change.action]:>3} {change.address}"
    if change.action == Action.REPLACE:
        head += (f"  (forces replacement: {', '.join(change.replace_paths)})" if change.replace_paths
                 else f"  ({change.reason.split(':', 1)[0]})")
    elif change.action == Action.IMPORT:
        head += f"  (import: exists, {owner_of(change.live)})"
    elif change.action == Action.READ:
        head += "  (read: another project's, never managed here)"
    lines = [head]
    if change.blocked:
        lines.append(f"      ! BLOCKED: {change.blocked}")
    if change.action == Action.CREATE:
        for key, value in change.desired.spec.items():
            if key == "schema":
                lines.append(f"      schema ({len(value)} columns):")
                lines.extend(_schema_lines(value, "        "))
            elif key == "pipeline" and isinstance(value, dict):
                lines.append(f"      pipeline = {_pipeline_summary(value)}")
            else:
                lines.append(f"      {key} = {_value(value)}")
    elif change.action in (Action.DELETE, Action.READ):
        lines.append(f"      # {change.reason}")
    else:
        for diff in change.diff:
            suffix = "  # forces replacement" if diff.forces_replacement else ""
            lines.append(f"      {diff.path}: {_value(diff.before)} → {_value(diff.after)}{suffix}")
        if change.reason and (change.kind in ("bigquery_table", "dataflow_job") or not change.diff):
            lines.append(f"      # {change.reason}")
    return lines


def _pipeline_summary(spec: dict[str, Any]) -> str:
    """A Dataflow job's pipeline spec in one line (the JSON output carries it whole)."""
    parts = [f"{len(spec.get('schema', {}).get('fields', []))} fields"]
    if spec.get("deduplication"):
        parts.append("dedup on " + ", ".join(spec["deduplication"]["key"]))
    if spec.get("data_quality"):
        parts.append(f"{len(spec['data_quality'])} quality rules")
    for zone in ("bronze", "silver", "gold"):
        if spec.get(zone, {}).get("table"):
            parts.append(f"{zone} {spec[zone]['table']}")
    if spec.get("dead_letter", {}).get("topic"):
        parts.append("dead letters to " + spec["dead_letter"]["topic"].rsplit("/", 1)[-1])
    return "(" + "; ".join(parts) + ")"


def _schema_lines(fields: list[dict[str, Any]], indent: str) -> list[str]:
    lines = []
    for field in fields:
        lines.append(f"{indent}{field['name']:<24} {field['type']:<10} {field.get('mode', 'NULLABLE')}")
        if field.get("fields"):
            lines.extend(_schema_lines(field["fields"], indent + "  "))
    return lines


def render_markdown(plan: Plan) -> str:
    counts = plan.summary()
    out = [f"### {_header(plan)}", ""]
    if plan.refused:
        out += [f"> [!CAUTION]\n> **Plan refused:** {plan.refused}", ""]
    out += [
        "| import | create | update | replace | delete | blocked | kept |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        f"| {counts['import']} | {counts['create']} | {counts['update']} | {counts['replace']} | {counts['delete']} "
        f"| {counts['blocked']} | {counts['kept']} |",
        "",
    ]
    if plan.blocked:
        out.append("> [!WARNING]\n> **Blocked changes** (will not be applied):")
        for change in plan.blocked:
            out.append(f"> - `{change.address}`: {change.blocked}")
        out.append("")
    access = security_changes(plan)
    if access:
        # Before the diff, outside the fold: a reviewer sees every grant and revocation before merge.
        out += [f"#### Access changes ({len(access)})", ""]
        out += [f"- **{change.action}** `{change.address}`: {change.security_summary}{_blocked_note(change)}"
                for change in access]
        out.append("")
    shown = [c for c in plan.changes if c.action != Action.NOOP or c.orphan]
    if shown:
        out += ["<details><summary>Changes</summary>", "", "```diff"]
        for change in shown:
            out.extend(_diff_lines(change))
        out += ["```", "", "</details>", ""]
    out.append(summary_line(plan))
    return "\n".join(out) + "\n"


def _diff_lines(change: Change) -> list[str]:
    # The ```diff fence colours lines by their first character: + green, - red, ! orange.
    head, *details = _text_change(change)
    first = {Action.CREATE: "+", Action.DELETE: "-", Action.REPLACE: "!", Action.UPDATE: "!",
             Action.IMPORT: "!"}.get(change.action, " ")
    return [f"{first} {head[4:]}  [{change.action}]", *details]
