"""The daemon writes each source's freshness where its Cloud Monitoring alert policy reads it."""

from __future__ import annotations

from types import SimpleNamespace

from reconciler.daemon.health_loop import HealthMonitor


class Writer:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[str, dict]] = []
        self.fail = fail

    def write_freshness(self, platform, ages):
        if self.fail:
            raise RuntimeError("monitoring unavailable")
        self.calls.append((platform, dict(ages)))


class Log:
    def __init__(self) -> None:
        self.errors: list[tuple[str, dict]] = []

    def error(self, event, **fields):
        self.errors.append((event, fields))


def health(**ages):
    return SimpleNamespace(sources=[SimpleNamespace(source_id=sid, freshness=SimpleNamespace(age_seconds=age))
                                    for sid, age in ages.items()])


STATE = SimpleNamespace(platform=SimpleNamespace(environment="prod"))


def test_each_judged_source_is_written_once_per_check_with_the_platform_label():
    writer, other = Writer(), SimpleNamespace()  # the same provider serves three kinds
    engine = SimpleNamespace(providers={"a": writer, "b": writer, "c": other})
    HealthMonitor._write_freshness(STATE, engine, health(orders=120.0, payments=None, clicks=5.0), Log())
    assert writer.calls == [("prod", {"orders": 120.0, "clicks": 5.0})], "unknown ages are not written"


def test_a_failed_write_is_logged_and_does_not_stop_the_check():
    log = Log()
    HealthMonitor._write_freshness(STATE, SimpleNamespace(providers={"a": Writer(fail=True)}), health(orders=1.0), log)
    assert [event for event, _ in log.errors] == ["health.freshness_write_failed"]
