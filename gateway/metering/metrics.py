"""Prometheus metrics, derived from usage events (one place computes them) plus a few counters
for things that are not requests (limit-store errors, ledger state).

Labels are bounded by the config: endpoint names, statuses, and principals only when they are
configured keys (JWT subjects are unbounded, so they count as `jwt`).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from gateway.metering.usage import UsageEvent

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1)


class Metrics:
    """A registry of the gateway's metrics; `record` takes usage events."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "gateway_requests",
            "Requests by endpoint, route and status",
            ["endpoint", "route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "gateway_request_latency_seconds",
            "Request latency",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.overhead = Histogram(
            "gateway_overhead_seconds",
            "Time spent in the gateway, upstream excluded",
            ["endpoint"],
            buckets=_OVERHEAD_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "gateway_tokens",
            "Tokens by endpoint, principal and kind",
            ["endpoint", "principal", "kind"],
            registry=r,
        )
        self.cost = Counter(
            "gateway_cost_usd", "Cost in USD", ["endpoint", "principal"], registry=r
        )
        self.rows = Counter(
            "gateway_rows_predicted", "Rows scored by custom models", ["endpoint"], registry=r
        )
        self.fallbacks = Counter(
            "gateway_fallbacks", "Calls answered by a fallback", ["endpoint"], registry=r
        )
        self.upstream_errors = Counter(
            "gateway_upstream_errors",
            "Calls that failed upstream (5xx, timeout, reset)",
            ["endpoint", "status"],
            registry=r,
        )
        self.limit_rejections = Counter(
            "gateway_limit_rejections",
            "Requests refused by a rate limit",
            ["scope", "kind"],
            registry=r,
        )
        self.budget_rejections = Counter(
            "gateway_budget_rejections", "Requests refused by a budget", ["scope"], registry=r
        )
        self.limit_store_errors = Counter(
            "gateway_limit_store_errors", "Limit store failures", ["outcome"], registry=r
        )
        self.ledger_queue_depth = Gauge(
            "gateway_ledger_queue_depth",
            "Usage events spooled but not yet in the database",
            registry=r,
        )
        # A gauge mirroring the ledger's own counter, read at scrape time.
        self.ledger_write_failures_total = Gauge(
            "gateway_ledger_write_failures_total", "Failed ledger database writes", registry=r
        )

        self.inference_rows_written = Counter(
            "gateway_inference_rows_written", "Inference-table rows written to Parquet", registry=r
        )
        self.inference_rows_dropped = Counter(
            "gateway_inference_rows_dropped",
            "Inference-table rows dropped (queue full or write failed)",
            registry=r,
        )
        self.traces_exported = Counter(
            "gateway_traces_exported", "Traces sent to the MLflow tracking server", registry=r
        )
        self.traces_dropped = Counter(
            "gateway_traces_dropped",
            "Traces dropped, by reason (queue_full, export_failed, rejected, invalid)",
            ["reason"],
            registry=r,
        )

        self.config_reloads = Counter(
            "gateway_config_reloads",
            "Config reloads by outcome (applied, refused)",
            ["outcome"],
            registry=r,
        )
        self.reload_broadcasts_rejected = Counter(
            "gateway_reload_broadcasts_rejected",
            "Reload broadcasts ignored (unsigned, forged, malformed, stale, replayed)",
            ["reason"],
            registry=r,
        )
        self.config_version = Gauge(
            "gateway_config_version",
            "1 for the config version this process serves",
            ["version"],
            registry=r,
        )

    def record(self, event: UsageEvent, *, principal_label: str) -> None:
        endpoint = event.endpoint
        self.requests.labels(endpoint, event.route, str(event.status)).inc()
        self.latency.labels(endpoint).observe(event.latency_ms / 1000)
        if event.overhead_ms:
            self.overhead.labels(endpoint).observe(event.overhead_ms / 1000)
        if event.prompt_tokens:
            self.tokens.labels(endpoint, principal_label, "prompt").inc(event.prompt_tokens)
        if event.completion_tokens:
            self.tokens.labels(endpoint, principal_label, "completion").inc(event.completion_tokens)
        if event.cost_usd:
            self.cost.labels(endpoint, principal_label).inc(event.cost_usd)
        if event.rows:
            self.rows.labels(endpoint).inc(event.rows)
        if event.fallback_used:
            self.fallbacks.labels(endpoint).inc()
        if event.status in (502, 503, 504):
            self.upstream_errors.labels(endpoint, str(event.status)).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
