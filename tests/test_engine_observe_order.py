"""Issue 14: which observe call a free worker takes next (reconciler/engine.py, `gather`): a
provider's split first, then its parts ahead of every call not yet started - so a chain of
requests (BigQuery: datasets, then each dataset's tables and query) does not queue behind two
dozen one-request kinds. The results keep the order of the calls either way."""

from __future__ import annotations

from reconciler.engine import _Split, gather


def test_a_split_and_its_parts_run_before_the_calls_still_waiting() -> None:
    ran: list[str] = []

    def call(name: str, result: list):
        def run():
            ran.append(name)
            return result
        return run

    split = _Split(lambda kind: [call("part0", ["p0"]), call("part1", ["p1a", "p1b"])], "kind")
    calls = [call("a", ["a"]), call("b", ["b"]), split, call("c", ["c"])]
    # One worker: the order in which calls start is the order in which they run.
    assert gather(calls, workers=1) == [["a"], ["b"], ["p0", "p1a", "p1b"], ["c"]]
    assert ran == ["part0", "part1", "a", "b", "c"]


def test_parts_go_ahead_of_waiting_calls_with_several_workers() -> None:
    ran: list[str] = []

    def call(name: str):
        def run():
            ran.append(name)
            return [name]
        return run

    split = _Split(lambda kind: [call(f"part{i}") for i in range(3)], "kind")
    calls = [*(call(f"k{i}") for i in range(6)), split]
    assert gather(calls, workers=2) == [[f"k{i}"] for i in range(6)] + [["part0", "part1", "part2"]]
    # The split started first; its three parts before the last four kinds at least.
    assert max(ran.index(f"part{i}") for i in range(3)) < ran.index("k5")
