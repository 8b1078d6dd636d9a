"""One error hierarchy for the whole gateway, rendered in one place per protocol.

Every failure a client can see is a `GatewayError` carrying its HTTP status and a protocol-neutral
error code. `render` at the bottom turns it into the body of the protocol the route speaks:
MLflow's `{"error_code", "message"}` on invocation, health and admin routes, OpenAI's
`{"error": {...}}` on `/v1/*`, Anthropic's `{"type": "error", ...}` on `/v1/messages`; and
`render_stream_event` into the event that ends a stream already under way.
Foreign exceptions are translated into these classes at the boundary where they are caught
(`raise ... from e`); nothing here guesses a status from message text.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Literal

import orjson

Protocol = Literal["mlflow", "openai", "anthropic"]


class GatewayError(Exception):
    """Root of every error the gateway renders to a client."""

    status: ClassVar[int] = 500
    error_code: ClassVar[str] = "INTERNAL_ERROR"  # MLflow / Databricks error code
    openai_type: ClassVar[str] = "server_error"

    def __init__(
        self,
        message: str,
        *,
        stack_trace: str | None = None,
        retry_after_s: float | None = None,
        details: Mapping[str, object] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.stack_trace = stack_trace
        self.retry_after_s = retry_after_s  # a 429's Retry-After; None: retrying will not help
        self.served_model: str | None = None  # set when a served model was already chosen
        self.details = details or {}  # extra fields of the MLflow body (sqlstate, issues, ...)


# --- client errors (4xx) -------------------------------------------------------------------------


class ClientError(GatewayError):
    status = 400
    error_code = "BAD_REQUEST"
    openai_type = "invalid_request_error"


class BadRequest(ClientError):
    pass


class InvalidParameterValue(ClientError):
    error_code = "INVALID_PARAMETER_VALUE"


class ConfigRefused(InvalidParameterValue):
    """A config sent for reload that cannot be applied; the running config keeps serving."""

    def __init__(self, error: ConfigError) -> None:
        super().__init__(
            "The config was refused; the running config keeps serving.",
            details={"issues": [str(issue) for issue in error.issues]},
        )


class Unauthenticated(ClientError):
    status = 401
    error_code = "UNAUTHENTICATED"
    openai_type = "authentication_error"


class PermissionDenied(ClientError):
    status = 403
    error_code = "PERMISSION_DENIED"
    openai_type = "permission_error"


class EndpointNotFound(ClientError):
    status = 404
    error_code = "ENDPOINT_NOT_FOUND"
    openai_type = "not_found_error"


class MethodNotAllowed(ClientError):
    status = 405
    error_code = "BAD_REQUEST"


class PayloadTooLarge(ClientError):
    status = 413
    error_code = "BAD_REQUEST"


class UnsupportedMediaType(ClientError):
    status = 415
    error_code = "BAD_REQUEST"


class RateLimited(ClientError):
    status = 429
    error_code = "REQUEST_LIMIT_EXCEEDED"
    openai_type = "rate_limit_error"


class BudgetExceeded(RateLimited):
    error_code = "BUDGET_EXCEEDED"


class CapacityFull(RateLimited):
    """An endpoint's provisioned capacity is in use: its fallbacks may still take the call."""


# --- the gateway's own state ---------------------------------------------------------------------


class NotReady(GatewayError):
    status = 503
    error_code = "TEMPORARILY_UNAVAILABLE"
    openai_type = "service_unavailable"


# --- upstream errors: a provider failed us -------------------------------------------------------


class UpstreamError(GatewayError):
    """The upstream could not be reached, reset the connection, or failed (5xx, bad body)."""

    status = 502
    error_code = "BAD_GATEWAY"
    openai_type = "upstream_error"
    retriable: ClassVar[bool] = True


class UpstreamTimeout(UpstreamError):
    status = 504
    error_code = "DEADLINE_EXCEEDED"
    openai_type = "timeout"


class UpstreamRateLimited(UpstreamError):
    """The upstream said 429; retried after its Retry-After, passed on as 429 if it persists."""

    status = 429
    error_code = "REQUEST_LIMIT_EXCEEDED"
    openai_type = "rate_limit_error"


class UpstreamCredentialsRefused(UpstreamError):
    """The upstream refused the gateway's own credentials (401/403): a deployment problem, so
    a 502; it counts towards the deployment's cooldown and fallbacks are tried, but the same
    call is not retried (it would be refused again)."""


class UpstreamRejected(GatewayError):
    """The upstream refused the request (4xx): passed on with its status and message."""

    openai_type = "invalid_request_error"
    retriable: ClassVar[bool] = False

    def __init__(self, message: str, *, status: int, upstream_type: str | None = None) -> None:
        super().__init__(message)
        self.status = status  # type: ignore[misc]  # per instance: the upstream decides it
        self.error_code = f"UPSTREAM_{status}"  # type: ignore[misc]
        if upstream_type:
            self.openai_type = upstream_type  # type: ignore[misc]


# --- model errors: raised while a custom model parses its input or predicts ---------------------


class ModelError(GatewayError):
    """An error reported by MLflow while scoring; carries MLflow's own code and status."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        error_code: str,
        stack_trace: str | None = None,
        details: dict[str, str] | None = None,
    ) -> None:
        # details: MLflow's sqlstate and error_class, rendered as it does
        super().__init__(message, stack_trace=stack_trace, details=details)
        self.status = status  # type: ignore[misc]  # per instance: MLflow decides it
        self.error_code = error_code  # type: ignore[misc]


# --- config errors (never reach a client of the data plane) --------------------------------------


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem in a config file, located by its YAML path (`endpoints[0].name`)."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(Exception):
    """A config that cannot be applied; lists every problem found, each by YAML path."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = issues
        super().__init__("\n".join(str(issue) for issue in issues))


# --- rendering -----------------------------------------------------------------------------------


def render(error: GatewayError, protocol: Protocol, *, expose_stack_traces: bool = False) -> bytes:
    """The error body of `protocol`; the only place error bodies are made."""
    if protocol == "openai":
        return _openai_body(error)
    if protocol == "anthropic":
        return _anthropic_body(error)
    return _mlflow_body(error, expose_stack_traces)


def render_stream_event(error: GatewayError, protocol: Protocol) -> bytes:
    """The server-sent event that ends a stream when `error` happens after its first byte.

    Anthropic streams end with Anthropic's `error` event; every other stream is made of OpenAI
    chunks (Databricks-style invocations of an LLM endpoint included), so it ends with an
    OpenAI error object as its last `data:`.
    """
    if protocol == "anthropic":
        return b"event: error\ndata: " + _anthropic_body(error) + b"\n\n"
    return b"data: " + _openai_body(error) + b"\n\n"


def _mlflow_body(error: GatewayError, expose_stack_traces: bool) -> bytes:
    """MLflow scoring-server shape: `{"error_code": ..., "message": ...}`."""
    body: dict[str, object] = {"error_code": error.error_code, "message": error.message}
    body.update(error.details)
    if expose_stack_traces and error.stack_trace:
        body["stack_trace"] = error.stack_trace
    return orjson.dumps(body)


def _openai_body(error: GatewayError) -> bytes:
    """OpenAI shape: `{"error": {"message", "type", "param", "code"}}`."""
    return orjson.dumps(
        {
            "error": {
                "message": error.message,
                "type": error.openai_type,
                "param": None,
                "code": error.error_code.lower(),
            }
        }
    )


_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
}


def _anthropic_body(error: GatewayError) -> bytes:
    """Anthropic shape: `{"type": "error", "error": {"type", "message"}}`."""
    kind = _ANTHROPIC_TYPES.get(error.status)
    if kind is None:
        kind = "invalid_request_error" if 400 <= error.status < 500 else "api_error"
    return orjson.dumps({"type": "error", "error": {"type": kind, "message": error.message}})
