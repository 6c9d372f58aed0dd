"""The agent's local API for the device's own applications, and a small Python client.

HTTP on localhost (standard library ``http.server``: the device image needs no web framework):

- ``GET  /v1/status``   the agent's status (same document as ``edge-agent status --json``)
- ``POST /v1/predict``  body: JSON ``{"inputs": {name: nested list}}`` (or ``{"x": …}`` for one input),
  or a raw ``.npy`` (``Content-Type: application/x-npy``) or ``.npz`` (``application/x-npz``);
  ``?raw=1`` returns quantized outputs untouched. Answers JSON with outputs, top-1, labels, latency.
- ``POST /v1/rollback`` reactivate the previous slot.
"""

from __future__ import annotations

import io
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np

from device_agent.engine import InferenceEngine, Prediction
from device_agent.errors import EdgefleetError, LocalApiError, TransportError

MAX_BODY = 16 << 20  # bytes per request


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


class LocalApi:
    """Serves the engine on ``host:port`` (port 0 picks a free one) in a daemon thread."""

    def __init__(
        self,
        engine: Callable[[], InferenceEngine],
        status: Callable[[], dict[str, Any]],
        rollback: Callable[[], bool],
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        handler = _make_handler(engine, status, rollback)
        self.server = ThreadingHTTPServer((host, port), handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, name="local-api", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _make_handler(
    engine: Callable[[], InferenceEngine], status: Callable[[], dict[str, Any]], rollback: Callable[[], bool]
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet: the agent logs what matters
            pass

        def _send(self, code: int, doc: Mapping[str, Any]) -> None:
            body = json.dumps(doc).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if urlsplit(self.path).path == "/v1/status":
                self._send(200, status())
            else:
                self._send(404, {"error": f"no such endpoint {self.path}", "code": "not-found"})

        def do_POST(self) -> None:
            url = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                self._send(413, {"error": f"body over {MAX_BODY} bytes", "code": "too-large"})
                return
            body = self.rfile.read(length)
            if url.path == "/v1/rollback":
                ok = rollback()
                self._send(
                    200 if ok else 409,
                    {"rolled_back": ok} if ok else {"error": "nothing to roll back to", "code": "no-previous"},
                )
                return
            if url.path != "/v1/predict":
                self._send(404, {"error": f"no such endpoint {url.path}", "code": "not-found"})
                return
            raw = parse_qs(url.query).get("raw", ["0"])[0] in ("1", "true")
            try:
                feeds = decode_inputs(body, self.headers.get("Content-Type", "application/json"))
                self._send(200, prediction_json(engine().predict(feeds, raw=raw)))
            except EdgefleetError as exc:
                self._send(400, {"error": str(exc), "code": exc.code})

    return Handler


class AgentClient:
    """A small client for the local API: ``AgentClient(url).predict({"image": x})``."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _call(self, method: str, path: str, body: bytes | None = None, ctype: str = "application/json") -> Any:
        req = urllib.request.Request(self.url + path, data=body, method=method, headers={"Content-Type": ctype})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            try:
                detail = json.loads(exc.read()).get("error", exc.reason)
            except ValueError:
                detail = exc.reason
            raise LocalApiError(f"agent API: {detail}", status=exc.code) from None
        except (urllib.error.URLError, OSError) as exc:
            raise TransportError(f"agent API at {self.url} unreachable: {getattr(exc, 'reason', exc)}") from None

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/v1/status")
        return result

    def predict(self, inputs: Mapping[str, np.ndarray] | np.ndarray, raw: bool = False) -> dict[str, Any]:
        """Send arrays as .npz (exact dtypes and shapes). Raises: LocalApiError, TransportError."""
        arrays = {"x": inputs} if isinstance(inputs, np.ndarray) else dict(inputs)
        buf = io.BytesIO()
        np.savez(buf, **arrays)  # type: ignore[arg-type]  # numpy's stub types the first kwarg as allow_pickle
        result: dict[str, Any] = self._call(
            "POST", "/v1/predict" + ("?raw=1" if raw else ""), buf.getvalue(), "application/x-npz"
        )
        return result

    def rollback(self) -> bool:
        return bool(self._call("POST", "/v1/rollback", b"").get("rolled_back"))
