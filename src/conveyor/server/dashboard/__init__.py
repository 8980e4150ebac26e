"""The scheduler's dashboard: a live page, a JSON API and Prometheus metrics over HTTP."""

from conveyor.server.dashboard.service import Dashboard

__all__ = ["Dashboard"]
