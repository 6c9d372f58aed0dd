"""The agent's local API for the device's own applications, and a small Python client.

HTTP (standard library ``http.server``: the device image needs no web framework) on a Unix socket
under the device home by default (``run/api.sock``, mode 0660: the agent's user and group), or on
TCP when ``[api] listen`` says ``HOST:PORT``, then only with the token in ``api.token`` (mode 0600)
and a ``Host`` naming the listener. Every request is bounded before any work (``api_security``):
``Content-Length`` required and capped, decoded array sizes computed from headers, a read timeout
per connection and a cap on connections (over it: 503 at once, no thread).

- ``GET  /v1/status``   the agent's status (same document as ``edge-agent status --json``)
- ``POST /v1/predict``  body: JSON ``{"inputs": {name: nested list}}`` (or ``{"x": …}`` for one input),
  or a raw ``.npy`` (``Content-Type: application/x-npy``) or ``.npz`` (``application/x-npz``);
  ``?raw=1`` returns quantized outputs untouched. Answers JSON with outputs, top-1, labels, latency.
- ``POST /v1/rollback`` reactivate the previous slot.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import socket
import socketserver
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np

from device_agent.api_security import ApiLimits, check_arrays, check_caller, check_length, listener_hosts
from device_agent.engine import InferenceEngine, Prediction
from device_agent.errors import ApiRefusedError, ConfigError, EdgefleetError, LocalApiError, TransportError

UNIX_PREFIX = "unix:"  # API URLs of a Unix socket: ``unix:/abs/path/api.sock``
MAX_UNIX_PATH = 107  # bytes in sockaddr_un.sun_path, less the terminating NUL


def decode_inputs(body: bytes, content_type: str) -> dict[str, np.ndarray]:
    """Raises: LocalApiError for a body that is not JSON/npy/npz of arrays."""
    try:
        if content_type.startswith("application/x-npy"):
            return {"x": np.load(io.BytesIO(body), allow_pickle=False)}
        if content_type.startswith("application/x-npz"):
            with np.load(io.BytesIO(body), allow_pickle=False) as npz:
                return {k: npz[k] for k in npz.files}
        doc = json.loads(body)
    except (ValueError, OSError, EOFError) as exc:
        raise LocalApiError(f"cannot decode the request body: {str(exc)[:200]}") from None
    if not isinstance(doc, dict):
        raise LocalApiError('JSON body must be {"inputs": {name: array}} or {"x": array}')
    inputs = doc.get("inputs", doc)
    if not isinstance(inputs, dict) or not inputs:
        raise LocalApiError('JSON body must be {"inputs": {name: array}} or {"x": array}')
    try:
        return {str(k): np.asarray(v, dtype=np.float32 if _is_float(v) else None) for k, v in inputs.items()}
    except (ValueError, TypeError) as exc:
        raise LocalApiError(f"inputs are not rectangular numeric arrays: {exc}") from None


def _is_float(value: Any) -> bool:
    while isinstance(value, list) and value:
        value = value[0]
    return isinstance(value, float)


def prediction_json(p: Prediction) -> dict[str, Any]:
    m = p.model.manifest
    doc: dict[str, Any] = {
        "model": {"name": m.name, "version": m.version, "sequence": m.sequence, "slot": p.model.slot},
        "outputs": {k: v.tolist() for k, v in p.outputs.items()},
        "latency_ms": round(p.latency_ms, 3),
    }
    if p.top1 is not None:
        doc |= {"top1": p.top1, "confidence": p.confidence, "labels": p.labels()}
    return doc


@dataclass(frozen=True)
class ApiHandlers:
    """What the API serves: the engine, the status document and the rollback action."""

    engine: Callable[[], InferenceEngine]
    status: Callable[[], dict[str, Any]]
    rollback: Callable[[], bool]


@dataclass(frozen=True)
class ApiSettings:
    """Where and how the API listens: ``listen`` is a socket path or ``HOST:PORT``; ``token`` is
    required for TCP; ``limits``, ``read_timeout_s`` and ``max_connections`` bound every caller."""

    listen: str
    token: str = ""
    limits: ApiLimits = field(default_factory=ApiLimits)
    read_timeout_s: float = 10.0  # seconds a connection may take to send its request
    max_connections: int = 16  # connections served at once; more get 503 without a thread


class _Bounded(socketserver.ThreadingMixIn):
    """A thread per connection up to ``max_connections``; beyond, a 503 from the accepting thread."""

    daemon_threads = True
    request_queue_size = 64  # listen() backlog: a burst of callers waits in the kernel, not in threads
    max_connections = 16
    busy_response = b""

    def _init_bound(self, max_connections: int) -> None:
        self.max_connections = max_connections
        self._slots = threading.BoundedSemaphore(max_connections)
        body = b'{"error": "too many connections", "code": "busy"}'
        head = f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
        self.busy_response = head.encode() + b"\r\nConnection: close\r\n\r\n" + body

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            try:
                request.settimeout(0.5)
                request.sendall(self.busy_response)
            except OSError:
                pass
            self.shutdown_request(request)  # type: ignore[attr-defined]
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a caller that hung up or timed out is not the agent's error; it must not print tracebacks


class _TcpServer(_Bounded, socketserver.TCPServer):
    allow_reuse_address = True


class _UnixServer(_Bounded, socketserver.UnixStreamServer):
    def server_bind(self) -> None:
        path = Path(self.server_address)  # type: ignore[arg-type]
        path.unlink(missing_ok=True)  # a socket left by a killed agent
        super().server_bind()
        os.chmod(path, 0o660)  # before listen(): nobody can connect while it is still wider


class LocalApi:
    """Serves ``handlers`` as ``settings`` say, in a daemon thread.

    Raises:
        ConfigError: a socket path too long for the OS, or a TCP listener without a token.
    """

    def __init__(self, handlers: ApiHandlers, settings: ApiSettings) -> None:
        self.settings = settings
        server: _TcpServer | _UnixServer
        if settings.listen.startswith("/"):
            if len(os.fsencode(settings.listen)) > MAX_UNIX_PATH:
                raise ConfigError(f"api socket path {settings.listen} is too long; set [api] listen to a shorter path")
            server = _UnixServer(settings.listen, _make_handler(handlers, settings, frozenset()))
        else:
            if not settings.token:
                raise ConfigError("a TCP local API needs a token")
            host, _, port = settings.listen.rpartition(":")
            server = _TcpServer((host or "127.0.0.1", int(port or 0)), _make_handler(handlers, settings, frozenset()))
            bound_host, bound_port = server.server_address[:2]
            server.RequestHandlerClass = _make_handler(
                handlers, settings, listener_hosts(str(bound_host), int(bound_port))
            )
        server._init_bound(settings.max_connections)
        self.server = server
        self._thread = threading.Thread(target=self.server.serve_forever, name="local-api", daemon=True)

    @property
    def url(self) -> str:
        if isinstance(self.server, _UnixServer):
            return UNIX_PREFIX + str(self.server.server_address)
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        if isinstance(self.server, _UnixServer):
            Path(str(self.server.server_address)).unlink(missing_ok=True)


def _make_handler(handlers: ApiHandlers, settings: ApiSettings, hosts: frozenset[str]) -> type[BaseHTTPRequestHandler]:
    """A handler class bound to what it serves and how (``hosts`` empty: no caller check, a Unix socket)."""
    attrs = {"handlers": handlers, "settings": settings, "hosts": hosts, "timeout": settings.read_timeout_s}
    return type("Handler", (_ApiHandler,), attrs)


class _ApiHandler(BaseHTTPRequestHandler):
    """The API's routes; ``_make_handler`` binds a subclass to its handlers and settings."""

    protocol_version = "HTTP/1.1"
    handlers: ApiHandlers
    settings: ApiSettings
    hosts: frozenset[str]

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the agent logs what matters
        pass

    def address_string(self) -> str:
        return "local"  # a Unix socket's peer has no address

    def _send(self, code: int, doc: Mapping[str, Any]) -> None:
        body = json.dumps(doc).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _refuse(self, exc: ApiRefusedError) -> None:
        self.close_connection = True  # the body (if any) is left unread: this connection is done
        self._send(exc.status or 400, {"error": str(exc), "code": exc.code})

    def _caller_ok(self) -> bool:
        if self.hosts:
            try:
                check_caller(self.headers, self.settings.token, self.hosts)
            except ApiRefusedError as exc:
                self._refuse(exc)
                return False
        return True

    def do_GET(self) -> None:
        if not self._caller_ok():
            return
        if urlsplit(self.path).path == "/v1/status":
            self._send(200, self.handlers.status())
        else:
            self._send(404, {"error": "no such endpoint", "code": "not-found"})

    def do_POST(self) -> None:
        if not self._caller_ok():
            return
        url = urlsplit(self.path)
        ctype = self.headers.get("Content-Type", "application/json")
        limits = self.settings.limits
        try:
            length = check_length(self.headers, ctype, limits)
            body = self.rfile.read(length)
            if len(body) != length:
                raise ApiRefusedError("the body ended early", status=400, code="bad-request")
            if url.path == "/v1/predict":
                check_arrays(body, ctype, limits)
        except ApiRefusedError as exc:
            self._refuse(exc)
            return
        self._route(url.path, url.query, body, ctype)

    def _route(self, path: str, query: str, body: bytes, ctype: str) -> None:
        if path == "/v1/rollback":
            ok = self.handlers.rollback()
            self._send(
                200 if ok else 409,
                {"rolled_back": ok} if ok else {"error": "nothing to roll back to", "code": "no-previous"},
            )
            return
        if path != "/v1/predict":
            self._send(404, {"error": "no such endpoint", "code": "not-found"})
            return
        raw = parse_qs(query).get("raw", ["0"])[0] in ("1", "true")
        try:
            feeds = decode_inputs(body, ctype)
            self._send(200, prediction_json(self.handlers.engine().predict(feeds, raw=raw)))
        except EdgefleetError as exc:
            self._send(400, {"error": str(exc), "code": exc.code})


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


class AgentClient:
    """A small client for the local API: ``AgentClient(url, token=...).predict({"image": x})``.

    ``url``: ``unix:/path/api.sock`` or ``http://HOST:PORT`` (then ``token``, from the home's ``api.token``).
    """

    def __init__(self, url: str, timeout: float = 30.0, token: str = "") -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.token = token

    def _connection(self) -> http.client.HTTPConnection:
        if self.url.startswith(UNIX_PREFIX):
            return _UnixConnection(self.url[len(UNIX_PREFIX) :], self.timeout)
        u = urlsplit(self.url)
        return http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port or 80, timeout=self.timeout)

    def request(self, method: str, path: str, body: bytes | None = None, ctype: str = "application/json") -> Any:
        """One call; the decoded JSON answer. Raises: LocalApiError (with the status), TransportError."""
        headers = {"Content-Type": ctype, "Content-Length": str(len(body or b""))}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        conn = self._connection()
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            raise TransportError(f"agent API at {self.url} unreachable: {exc}") from None
        finally:
            conn.close()
        try:
            doc = json.loads(data)
        except ValueError:
            doc = {}
        if resp.status >= 400:
            detail = doc.get("error", resp.reason) if isinstance(doc, dict) else resp.reason
            raise LocalApiError(f"agent API: {detail}", status=resp.status)
        return doc

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", "/v1/status")
        return result

    def predict(self, inputs: Mapping[str, np.ndarray] | np.ndarray, raw: bool = False) -> dict[str, Any]:
        """Send arrays as .npz (exact dtypes and shapes). Raises: LocalApiError, TransportError."""
        arrays = {"x": inputs} if isinstance(inputs, np.ndarray) else dict(inputs)
        buf = io.BytesIO()
        np.savez(buf, **arrays)  # type: ignore[arg-type]  # numpy's stub types the first kwarg as allow_pickle
        result: dict[str, Any] = self.request(
            "POST", "/v1/predict" + ("?raw=1" if raw else ""), buf.getvalue(), "application/x-npz"
        )
        return result

    def rollback(self) -> bool:
        return bool(self.request("POST", "/v1/rollback", b"").get("rolled_back"))
