"""HTTP access to views: ``GET /views``, ``GET /sql?q=...``, ``POST /sql``, and point lookups
``GET /views/<view>/rows?key=<key>`` (``&key_type=int|float|json`` for keys that are not
strings; a JSON list is a tuple key, such as ``["c1", 1767225600000]`` for a window).

Answers are JSON (``{"columns": [...], "rows": [[...], ...]}``), or Arrow IPC stream bytes when
the request asks for ``application/vnd.apache.arrow.stream`` (``Accept`` header or
``?format=arrow``). A refused or failed query is a 400 with ``{"error": "..."}``; nothing else
ever reaches the client (no stack traces). The server binds 127.0.0.1 by default; bound anywhere
else it requires a bearer token.
"""

from __future__ import annotations

import datetime
import decimal
import hmac
import ipaddress
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlparse

import pyarrow as pa

from raystream.errors import ConfigError, ViewQueryError

if TYPE_CHECKING:
    from raystream.views.server import ViewServer

log = logging.getLogger("raystream.views.http")

ARROW = "application/vnd.apache.arrow.stream"
_MAX_BODY = 1 << 20


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (or ``localhost``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class HttpServer:
    """A threaded HTTP server in front of a :class:`ViewServer`."""

    def __init__(self, views: ViewServer, host: str, port: int, token: str | None) -> None:
        if not is_loopback(host) and not token:
            raise ConfigError(
                f"http_host: binding {host!r} exposes SQL beyond this machine; set http_token "
                "(clients send 'Authorization: Bearer <token>') or bind 127.0.0.1"
            )
        handler = type("Handler", (_Handler,), {"views": views, "token": token})
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """Where the server listens."""
        host, port = self._server.server_address[:2]
        name = host.decode() if isinstance(host, bytes) else str(host)
        return f"http://{name}:{port}"

    def start(self) -> HttpServer:
        """Serve in a background thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()


class _Handler(BaseHTTPRequestHandler):
    views: ViewServer
    token: str | None

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def _serve(self, method: str) -> None:
        try:
            if not self._authorized():
                self._json(401, {"error": "missing or wrong bearer token"})
                return
            url = urlparse(self.path)
            params = {k: v[-1] for k, v in parse_qs(url.query).items()}
            parts = url.path.strip("/").split("/")
            if url.path == "/views" and method == "GET":
                self._json(200, {"views": self.views.views()})
            elif len(parts) == 3 and parts[0] == "views" and parts[2] == "rows" and method == "GET":
                view = unquote(parts[1])
                key = parse_key(params)
                self._json(200, {"view": view, "key": key, "rows": self.views.get(view, key)})
            elif url.path == "/sql":
                query, as_of = self._query(method, params)
                table = self.views.sql(query, as_of)
                self._result(table, params)
            else:
                self._json(
                    404,
                    {
                        "error": "not found: use GET /views, GET /views/<view>/rows?key=..., "
                        "GET or POST /sql"
                    },
                )
        except ViewQueryError as exc:
            self._json(400, {"error": str(exc)})
        except Exception:
            log.exception("HTTP request failed")
            self._json(500, {"error": "internal error (see the view server's log)"})

    def _authorized(self) -> bool:
        if not self.token:
            return True
        got = self.headers.get("Authorization", "")
        return hmac.compare_digest(got.encode(), f"Bearer {self.token}".encode())

    def _query(self, method: str, params: dict[str, str]) -> tuple[str, float | None]:
        as_of_raw: Any = params.get("as_of")
        if method == "GET":
            query = params.get("q") or params.get("sql") or ""
        else:
            length = int(self.headers.get("Content-Length") or 0)
            if length > _MAX_BODY:
                raise ViewQueryError(f"request body over {_MAX_BODY} bytes")
            body = self.rfile.read(length).decode("utf-8", "replace")
            if (self.headers.get("Content-Type") or "").startswith("application/json"):
                try:
                    doc = json.loads(body)
                except json.JSONDecodeError as exc:
                    raise ViewQueryError(f"the JSON body does not parse: {exc}") from exc
                if not isinstance(doc, dict):
                    raise ViewQueryError('the JSON body must be {"sql": "...", "as_of": ...}')
                query = str(doc.get("sql") or doc.get("q") or "")
                as_of_raw = doc.get("as_of", as_of_raw)
            else:
                query = body
        try:
            as_of = None if as_of_raw in (None, "") else float(as_of_raw)
        except (TypeError, ValueError) as exc:
            raise ViewQueryError("as_of must be a unix time in seconds") from exc
        return query, as_of

    def _result(self, table: pa.Table, params: dict[str, str]) -> None:
        wants_arrow = params.get("format") == "arrow" or ARROW in (self.headers.get("Accept") or "")
        if wants_arrow:
            self._send(200, ARROW, table_arrow(table))
            return
        self._send(200, "application/json", table_json(table))

    def _json(self, status: int, doc: Any) -> None:
        self._send(status, "application/json", json.dumps(doc, default=_jsonable).encode())

    def _send(self, status: int, ctype: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def parse_key(params: dict[str, str]) -> Any:
    """The lookup key of a ``/views/<view>/rows`` request: ``key`` as text, or as ``key_type``
    says (int, float, or json, where a list stands for a tuple key)."""
    if "key" not in params:
        raise ViewQueryError("a lookup needs ?key=... (and &key_type=int|float|json if needed)")
    text, kind = params["key"], params.get("key_type", "str")
    try:
        if kind == "str":
            return text
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
        if kind == "json":
            value = json.loads(text)
            return tuple(value) if isinstance(value, list) else value
    except ValueError as exc:
        raise ViewQueryError(f"key {text!r} is not a {kind}: {exc}") from exc
    raise ViewQueryError(f"key_type must be str, int, float or json, not {kind!r}")


def table_json(table: pa.Table) -> bytes:
    """``{"columns": [...], "rows": [[...], ...]}``: how HTTP and the CLI give results as JSON
    (timestamps as ISO 8601 text, decimals as numbers, bytes as UTF-8 text)."""
    rows = [list(r.values()) for r in table.to_pylist()]
    return json.dumps({"columns": table.column_names, "rows": rows}, default=_jsonable).encode()


def table_arrow(table: pa.Table) -> bytes:
    """``table`` as Arrow IPC stream bytes (``application/vnd.apache.arrow.stream``)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def _jsonable(v: Any) -> Any:
    if isinstance(v, datetime.datetime | datetime.date):
        return v.isoformat()
    if isinstance(v, decimal.Decimal):
        return float(v)
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return str(v)
