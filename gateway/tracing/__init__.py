"""Tracing: sampled calls sent to an MLflow tracking server as traces, off the request path."""

from gateway.tracing.exporter import TraceExporter
from gateway.tracing.mlflow_server import MlflowServer
from gateway.tracing.policy import TracePolicy, trace_policies
from gateway.tracing.record import CallerSpan, TraceRecord, caller_span

__all__ = [
    "CallerSpan",
    "MlflowServer",
    "TraceExporter",
    "TracePolicy",
    "TraceRecord",
    "caller_span",
    "trace_policies",
]
