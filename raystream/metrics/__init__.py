"""Observability: every metric declared once (:mod:`~raystream.metrics.catalog`), recorded per
worker (:mod:`~raystream.metrics.worker`), merged and served per app by the coordinator
(:mod:`~raystream.metrics.aggregate`, :mod:`~raystream.metrics.server`), mirrored to
``ray.util.metrics``; and the app/worker/task context of log records
(:mod:`~raystream.metrics.logcontext`).
"""

from __future__ import annotations

from raystream.metrics.catalog import METRICS, Kind, MetricSpec, exposed_names

__all__ = ["METRICS", "Kind", "MetricSpec", "exposed_names"]
