"""One renderer per protocol: every error body, and the event that ends a broken stream."""

from __future__ import annotations

import orjson
import pytest

from gateway.errors import (
    BudgetExceeded,
    ConfigError,
    ConfigIssue,
    ConfigRefused,
    EndpointNotFound,
    RateLimited,
    UpstreamTimeout,
    render,
    render_stream_event,
)


@pytest.mark.parametrize(
    ("error", "anthropic_type"),
    [
        (RateLimited("slow down"), "rate_limit_error"),
        (BudgetExceeded("spent"), "rate_limit_error"),
        (EndpointNotFound("no such model"), "not_found_error"),
        (UpstreamTimeout("late"), "api_error"),
    ],
)
def test_a_stream_error_speaks_the_routes_protocol(
    error: RateLimited | EndpointNotFound | UpstreamTimeout, anthropic_type: str
) -> None:
    event = render_stream_event(error, "anthropic")
    name, data = event.split(b"\n", 1)
    assert name == b"event: error" and event.endswith(b"\n\n")
    body = orjson.loads(data.removeprefix(b"data: "))
    assert body == {"type": "error", "error": {"type": anthropic_type, "message": error.message}}
    openai_event = render_stream_event(error, "openai")
    assert orjson.loads(openai_event.removeprefix(b"data: "))["error"]["type"] == error.openai_type


def test_a_refused_config_is_rendered_like_every_other_error() -> None:
    refused = ConfigRefused(ConfigError([ConfigIssue("endpoints[0].name", "duplicate")]))
    assert orjson.loads(render(refused, "mlflow")) == {
        "error_code": "INVALID_PARAMETER_VALUE",
        "message": "The config was refused; the running config keeps serving.",
        "issues": ["endpoints[0].name: duplicate"],
    }
    assert refused.status == 400
