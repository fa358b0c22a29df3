"""Where the connector listens: every interface by default (Cloud Run needs it), the address in
``$HEADWATER_CONNECTOR_HOST`` when set - and loopback only when the local runner starts it, so a
local webhook receiver (possibly unsigned) is not reachable from the network.

The addresses are read from the kernel: the process's listening TCP sockets, matched by inode
between ``/proc/<pid>/fd`` and ``/proc/net/tcp{,6}``.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import sys
from pathlib import Path

import pytest

from providers.localrunner import LocalRunnerProvider, stop_all
from reconciler.resources import Kind, Resource
from tests.connector.conftest import rest_spec
from tests.connector.test_process import _env, _free_port, _get, _start, _wait_for
from tests.connector.test_webhook import KEY, hook_spec

TCP_LISTEN = "0A"


def listening(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket process ``pid`` listens on."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed in between
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        lines = Path(table).read_text().splitlines()[1:] if Path(table).exists() else []
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == TCP_LISTEN and inode in inodes:
                found.add(_address(local))
    return found


def _address(hex_address: str) -> tuple[str, int]:
    """``0100007F:1F90`` -> ("127.0.0.1", 8080): the address is in 32-bit words of host order."""
    ip_hex, port_hex = hex_address.split(":")
    raw = bytes.fromhex(ip_hex)
    if sys.byteorder == "little":
        raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(raw)), int(port_hex, 16)


def non_loopback_address() -> str | None:
    """An IPv4 address of this machine that is not loopback, if it has one (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: only picks the route's source address
            address = probe.getsockname()[0]
        except OSError:
            return None
    return None if ipaddress.ip_address(address).is_loopback or address == "0.0.0.0" else address


def test_the_local_runner_starts_connectors_on_loopback_only(pubsub, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HEADWATER_CONNECTOR_HOST", "0.0.0.0")  # ours: the runner's choice wins
    state_dir = tmp_path / "state"
    runner = LocalRunnerProvider(pubsub.project, state_dir, run_jobs=True)
    # An unsigned webhook receiver: the case that must not face the network.
    service = Resource(Kind.CLOUD_RUN_SERVICE, "hooks-connector", {
        "image": "connector:1", "command": ["python", "-m", "connector"],
        "connector": hook_spec(pubsub, signature=None), "secrets": {},
        "service_account": None, "min_instances": 0, "max_instances": 1, "ingress": "all",
        "cpu_always_allocated": False, "public": True}, {"managed-by": "headwater"})
    try:
        runner.create(service)  # returns once the process listens
        record = runner.service_record("hooks-connector")
        assert listening(record.pid) == {("127.0.0.1", record.port)}
        assert _get(f"http://127.0.0.1:{record.port}/healthz").status_code == 200
        elsewhere = non_loopback_address()
        if elsewhere is not None:  # end to end, where the machine has another interface
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection((elsewhere, record.port), timeout=5).close()
    finally:
        stop_all(state_dir)


@pytest.mark.parametrize(("host", "expected"), [(None, "0.0.0.0"), ("127.0.0.1", "127.0.0.1")],
                         ids=["default-every-interface", "loopback"])
@pytest.mark.parametrize("kind", ["webhook", "rest_api"])
def test_python_m_connector_listens_where_it_is_told(api, pubsub, bucket, kind: str, host: str | None,
                                                     expected: str) -> None:
    port = _free_port()
    if kind == "webhook":
        env = _env(hook_spec(pubsub), HEADWATER_WEBHOOK_SECRET=KEY.decode(), PORT=str(port))
    else:  # the poller's /healthz
        env = _env(rest_spec(api, pubsub, bucket, poll_interval_seconds=30), PORT=str(port))
    if host is not None:
        env["HEADWATER_CONNECTOR_HOST"] = host
    process = _start(env)
    try:
        _wait_for(lambda: _get(f"http://127.0.0.1:{port}/healthz"), what="/healthz")
        assert listening(process.pid) == {(expected, port)}
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert f"on {expected} port {port}" in stderr
