"""Benchmark: loading and validating a desired-state repo (`reconciler.load.load_repo`) at scale.

Generates a repo of N event-streaming sources (one connector YAML and one JSON schema each, as
`plan_scaling.py` does) and times `load_repo` on it: wall and CPU seconds, best and median of
the rounds. With ``--baseline REV`` the same repo is loaded by the code of REV too (a temporary
``git worktree``), in alternating rounds in one sitting, and the ratio is reported; no emulator
or network is involved.

With ``--commit`` what is timed is the daemon's load of a one-file commit instead: the repo
loaded once, then one connector file edited (a label added, then removed again) and loaded with
``load_repo(previous=<the last state>, changed=[that file])``, as the daemon does with git's list
of changed files (issue 14: "a one-source commit ... stays flat from 10 to 10,000 sources").

    .venv/bin/python bench/load_speed.py [--sources 1000 ...] [--rounds 7] [--candidate REV]
                                         [--baseline REV | --old FILE@REV ...] [--commit] [--json out.json]

``--old reconciler/yamlsrc.py@REV`` compares with the candidate's tree but that file as it was at
REV: one change measured alone while others land around it. The time of the compile-time limits
(`reconciler.limits.compiled_problems`, load_repo's last step) is reported apart from the rest.

Each round is a fresh process per side (imports warm, one load untimed, then ``--loads`` timed
loads, the best kept), so the two sides share the machine's state alternately, not in blocks.
Target (issue 14): 1,000 sources loaded and validated in at most 0.5 s on this machine; a
one-file commit's load flat from 10 to 10,000 sources.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from plan_scaling import generate_repo, machine  # noqa: E402

# Run in a child process whose sys.path starts with the tree under test.
_ROUND = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
import reconciler.load as load
import reconciler.limits as limits
assert load.__file__.startswith(sys.argv[1]), load.__file__
repo, loads, commit = sys.argv[2], int(sys.argv[3]), sys.argv[4] == "commit"
# The compile-time limits (load_repo's last step: it compiles the whole desired state) timed apart.
spent = [0.0]
compiled_problems = limits.compiled_problems
def timed(*args, **kwargs):
    start = time.process_time()
    try:
        return compiled_problems(*args, **kwargs)
    finally:
        spent[0] += time.process_time() - start
limits.compiled_problems = timed
state = load.load_repo(repo)  # imports, caches, the page cache: not what is measured
if commit:  # a one-file commit: the first connector file gains a label, then loses it again
    import os
    name = sorted(os.listdir(os.path.join(repo, "connectors")))[0]
    rel, path = f"connectors/{name}", os.path.join(repo, "connectors", name)
    original = open(path).read()
walls, cpus, compiles = [], [], []
for index in range(loads + commit):
    if commit:
        with open(path, "w") as out:
            out.write(original + ("labels: {bench: edited}\\n" if index % 2 == 0 else ""))
    spent[0] = 0.0
    wall, cpu = time.perf_counter(), time.process_time()
    state = load.load_repo(repo, previous=state, changed=[rel]) if commit else load.load_repo(repo)
    walls.append(time.perf_counter() - wall)
    cpus.append(time.process_time() - cpu)
    compiles.append(spent[0])
if commit:
    with open(path, "w") as out:
        out.write(original)
    walls, cpus, compiles = walls[1:], cpus[1:], compiles[1:]  # the first commit: warming up
best = min(range(loads), key=walls.__getitem__)
print(json.dumps({"wall": walls[best], "cpu": cpus[best], "compile_cpu": compiles[best], "sources": len(state.sources)}))
"""


def one_round(tree: Path, repo: Path, loads: int, commit: bool = False) -> dict:
    out = subprocess.run([sys.executable, "-c", _ROUND, str(tree), str(repo), str(loads),
                          "commit" if commit else "full"],
                         check=True, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(tree)})
    return json.loads(out.stdout)


def worktree(rev: str, where: Path) -> Path:
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--quiet", str(where), rev], check=True)
    return where


def swap_in(tree: Path, spec: str) -> None:
    """``FILE@REV``: ``tree``'s FILE replaced by its text at REV."""
    file, rev = spec.rsplit("@", 1)
    text = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:{file}"], check=True, capture_output=True).stdout
    (tree / file).write_bytes(text)


def summary(rounds: list[dict]) -> dict:
    walls = [r["wall"] for r in rounds]
    cpus = [r["cpu"] for r in rounds]
    rest = [r["cpu"] - r["compile_cpu"] for r in rounds]
    return {"wall_best": round(min(walls), 5), "wall_median": round(statistics.median(walls), 5),
            "cpu_best": round(min(cpus), 5), "cpu_median": round(statistics.median(cpus), 5),
            "compile_cpu_median": round(statistics.median(r["compile_cpu"] for r in rounds), 5),
            "load_cpu_median": round(statistics.median(rest), 5)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sources", type=int, nargs="+", default=[1000])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--loads", type=int, default=3, help="timed loads per round (the best is kept)")
    parser.add_argument("--baseline", help="a git revision to compare with (e.g. the commit before a change)")
    parser.add_argument("--old", nargs="+", metavar="FILE@REV", default=[],
                        help="compare with the candidate's own tree but these files as they were at REV "
                             "(one change measured alone, whatever else changed since)")
    parser.add_argument("--candidate", help="a git revision to measure instead of the working tree")
    parser.add_argument("--commit", action="store_true",
                        help="time the load of a one-file commit (git mode, with the previous state)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    measured = [measure(args, sources) for sources in args.sources]
    if args.json:
        document = measured[0] if len(measured) == 1 else {**{k: v for k, v in measured[0].items() if k not in (
            "sources", "results", "raw", "load_average")}, "sizes": measured}
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    return 0


def measure(args: argparse.Namespace, sources: int) -> dict:
    """The rounds at one size, printed; the JSON document of that size."""

    trees: dict[str, Path] = {}
    added: list[Path] = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            trees["candidate"] = ROOT
            if args.candidate:
                trees["candidate"] = worktree(args.candidate, Path(tmp) / "candidate")
                added.append(trees["candidate"])
            if args.baseline or args.old:
                trees["baseline"] = worktree(args.baseline or args.candidate or "HEAD", Path(tmp) / "baseline")
                added.append(trees["baseline"])
                for spec in args.old:
                    swap_in(trees["baseline"], spec)
            repo = generate_repo(Path(tmp) / "repo", sources, "bench-proj", "hwb")
            rounds: dict[str, list[dict]] = {name: [] for name in trees}
            for index in range(args.rounds):
                order = list(trees) if index % 2 == 0 else list(reversed(trees))  # alternate who goes first
                for name in order:
                    rounds[name].append(one_round(trees[name], repo, args.loads, args.commit))
                    assert rounds[name][-1]["sources"] == sources, rounds[name][-1]
        finally:
            for tree in added:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)

    load_average = os.getloadavg()
    results = {name: summary(r) for name, r in rounds.items()}
    print(f"Machine: {machine()}; load average {load_average[0]:.2f}")
    what = "a one-file commit's load_repo (git mode)" if args.commit else "load_repo"
    print(f"{what}, {sources} sources, best of {args.loads} loads per round, {args.rounds} alternating rounds")
    scale, unit = (1000, "ms") if args.commit else (1, "s")
    print(f"{'code':<10} {'wall best':>9} {'wall med':>9} {'cpu best':>9} {'cpu med':>9} "
          f"{'limits cpu':>10} {'rest cpu':>9}   ({unit})")
    revs = {"candidate": args.candidate or "working tree",
            "baseline": " ".join([args.baseline or args.candidate or "HEAD", *args.old])}
    for name, row in results.items():
        print(f"{name:<10} {row['wall_best'] * scale:>9.3f} {row['wall_median'] * scale:>9.3f} "
              f"{row['cpu_best'] * scale:>9.3f} {row['cpu_median'] * scale:>9.3f} "
              f"{row['compile_cpu_median'] * scale:>10.3f} {row['load_cpu_median'] * scale:>9.3f}")
    for name, rev in revs.items():
        if name in results:
            print(f"  {name}: {rev}")
    print("  limits cpu: reconciler.limits.compiled_problems (load_repo compiles the whole state to check GCP's "
          "limits); rest cpu: reading, parsing, validating and the cross-file checks (medians)")
    if "baseline" in results:
        ratio = results["baseline"]["wall_median"] / results["candidate"]["wall_median"]
        rest = results["baseline"]["load_cpu_median"] / results["candidate"]["load_cpu_median"]
        print(f"speed-up, baseline / candidate: {ratio:.2f}x wall (median); {rest:.2f}x on the rest (CPU, median)")
        results["speedup_wall_median"] = round(ratio, 2)
        results["speedup_rest_cpu_median"] = round(rest, 2)
    return {"machine": machine(), "load_average": round(load_average[0], 2), "mode": "commit" if args.commit else "full",
            "sources": sources, "rounds": args.rounds, "loads": args.loads, "revisions": revs, "results": results,
            "raw": rounds}


if __name__ == "__main__":
    sys.exit(main())
