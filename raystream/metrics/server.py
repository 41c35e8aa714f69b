"""The app's Prometheus endpoint: prometheus-client's HTTP server over an app's merged metrics.

The coordinator starts it on ``RuntimeConfig.metrics_host``:``metrics_port`` (127.0.0.1 and a
free port by default; ``raystream status`` and the coordinator's log show the address). Give a
fixed port to scrape it from Prometheus (``deploy/prometheus/prometheus.yml``);
``metrics_port=None`` turns it off.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server

from raystream.errors import ConfigError

log = logging.getLogger("raystream.metrics")


class MetricsServer:
    """Serves one collector's metrics at ``http://host:port/metrics`` until :meth:`close`."""

    def __init__(self, collector: Any, host: str, port: int) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)
        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise ConfigError(
                f"metrics_port: cannot serve metrics on {host}:{port} ({exc}); choose a free "
                "port, 0 for any free port, or metrics_port=None to turn the endpoint off"
            ) from exc
        self.host = host
        self.port = int(self._server.server_port)
        self._closed = threading.Event()

    @property
    def url(self) -> str:
        """Where Prometheus scrapes."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._server.shutdown()
        self._server.server_close()
