"""Inference tables: sampled request and response payloads of calls, as Parquet files."""

from gateway.inference_tables.capture import (
    Capture,
    CapturePolicy,
    InferenceTables,
    capture_policies,
)
from gateway.inference_tables.writer import InferenceRow, TableWriter

__all__ = [
    "Capture",
    "CapturePolicy",
    "InferenceRow",
    "InferenceTables",
    "TableWriter",
    "capture_policies",
]
