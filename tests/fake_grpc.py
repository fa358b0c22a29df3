"""The plumbing of the local gRPC endpoints that stand in for services without an emulator
(`fake_monitoring.FakeMonitoring`, `fake_datacatalog.FakeDataCatalog`): a server on a loopback
port whose methods decode each request with the client library's own type, record it, and answer
with a handler of the fake; channels to it for the official clients; list paging as Google's
APIs page (an opaque token, the fake's ``page_size`` overriding the request's)."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Mapping
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc


@dataclass(frozen=True)
class Call:
    method: str
    request: Any


class Abort(Exception):
    """Raised by a handler: the RPC fails with ``code``."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


# Per service (its full gRPC name), per method: (the request's type, the fake's handler).
Services = Mapping[str, Mapping[str, tuple[Any, Callable[[Any], Any]]]]


class GrpcFake:
    """A started gRPC server for ``services``; ``calls`` records every request, decoded."""

    def __init__(self, services: Services, *, first_id: int = 1001) -> None:
        self.calls: list[Call] = []
        self.page_size: int | None = None
        self._ids = itertools.count(first_id)
        self._lock = threading.Lock()
        self._channels: list[grpc.Channel] = []
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        handlers = []
        for service, methods in services.items():
            table = {name: grpc.unary_unary_rpc_method_handler(
                self._handler(name, request_type, fn), request_deserializer=request_type.deserialize,
                response_serializer=serialize) for name, (request_type, fn) in methods.items()}
            handlers.append(grpc.method_handlers_generic_handler(service, table))
        self.server.add_generic_rpc_handlers(handlers)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def channel(self) -> grpc.Channel:
        """A new channel to this server (closed by `close`)."""
        opened = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        self._channels.append(opened)
        return opened

    def close(self) -> None:
        for opened in self._channels:
            opened.close()
        self.server.stop(None)

    def methods(self) -> list[str]:
        return [c.method for c in self.calls]

    def mutating(self) -> list[Call]:
        return [c for c in self.calls if not c.method.startswith(("List", "Get"))]

    def _handler(self, name: str, request_type: Any, fn: Any) -> Any:
        def handle(request: Any, context: grpc.ServicerContext) -> Any:
            with self._lock:
                self.calls.append(Call(name, request_type.deserialize(request_type.serialize(request))))
                try:
                    return fn(request)
                except Abort as exc:
                    context.abort(exc.code, str(exc))
        return handle

    def _page(self, request: Any, items: list[Any]) -> tuple[list[Any], str]:
        start = int(request.page_token or 0)
        size = self.page_size or request.page_size or len(items) or 1
        return items[start:start + size], (str(start + size) if start + size < len(items) else "")

    def _next(self) -> str:
        return str(next(self._ids))


def serialize(message: Any) -> bytes:
    """A response's bytes: a protobuf message's or a proto-plus one's."""
    if hasattr(message, "SerializeToString"):
        return message.SerializeToString()
    return type(message).serialize(message)


def copy_message(message: Any) -> Any:
    """A deep copy of a proto-plus message (what the fake keeps is never the caller's object)."""
    return type(message).deserialize(type(message).serialize(message))
