"""Upstreams that speak OpenAI's wire format: every `foundation` server and OpenAI-format providers.

The client's body is forwarded with only `model` rewritten (and, for streams, usage requested);
the upstream's answer is relayed as it came. Deployments are balanced by least in-flight calls,
and one that keeps failing is cooled down for a while.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from pydantic import SecretStr

from gateway.config.schema import (
    CooldownConfig,
    ExternalEndpointConfig,
    FoundationEndpointConfig,
    Task,
)
from gateway.errors import (
    UpstreamCredentialsRefused,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
)
from gateway.llm.sse import sse_events
from gateway.llm.types import Completed, LLMRequest, Streaming
from gateway.metering.usage import TokenUsage
from gateway.providers.base import ProviderFactory
from gateway.providers.http_pool import SessionPool

TASK_PATHS: dict[Task, str] = {
    "chat": "/chat/completions",
    "completions": "/completions",
    "embeddings": "/embeddings",
}

AZURE_DEFAULT_API_VERSION = "2024-10-21"
SSE_CONTENT_TYPE = "text/event-stream"


@dataclass(frozen=True, slots=True)
class Target:
    """Where one deployment's calls go: URL per task, headers, and the upstream's model name."""

    label: str
    urls: dict[Task, str]
    headers: dict[str, str]
    model: str | None  # None: the URL names the model (Azure deployments)


def foundation_backend(
    config: FoundationEndpointConfig, sessions: SessionPool
) -> OpenAICompatBackend:
    """A self-hosted model's replicas (vLLM, TGI, Ollama, ...), balanced by in-flight calls."""
    targets = [
        openai_target(f"{config.name}/{i}", d.api_base, d.model, _secret(d.api_key))
        for i, d in enumerate(config.deployments)
    ]
    return OpenAICompatBackend(targets, sessions, config.cooldown)


def hosted_backend(default_api_base: str | None) -> ProviderFactory:
    """A hosted provider whose API is OpenAI's wire format, at `default_api_base` unless the
    endpoint sets `api_base` (None: it must)."""

    def build(config: ExternalEndpointConfig, sessions: SessionPool) -> OpenAICompatBackend:
        api_base = config.api_base or default_api_base
        if api_base is None:
            raise ValueError(f"provider {config.provider!r} needs an api_base")
        label = f"{config.provider}/{config.model}"
        target = openai_target(label, api_base, config.model, _secret(config.api_key))
        return OpenAICompatBackend([target], sessions, config.cooldown)

    return build


def azure_backend(config: ExternalEndpointConfig, sessions: SessionPool) -> OpenAICompatBackend:
    """Azure OpenAI: the deployment is in the URL, the key in `api-key`."""
    if config.api_base is None:
        raise ValueError("provider 'azure' needs an api_base")  # https://NAME.openai.azure.com
    label = f"{config.provider}/{config.model}"
    target = azure_target(
        label, config.api_base, config.model, _secret(config.api_key), config.api_version
    )
    return OpenAICompatBackend([target], sessions, config.cooldown)


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None


def openai_target(label: str, api_base: str, model: str, api_key: str | None) -> Target:
    headers = {"content-type": "application/json"}
    if api_key:
        headers["authorization"] = f"Bearer {api_key}"
    return Target(
        label, {task: api_base + path for task, path in TASK_PATHS.items()}, headers, model
    )


def azure_target(
    label: str, api_base: str, deployment: str, api_key: str | None, version: str | None
) -> Target:
    query = f"?api-version={version or AZURE_DEFAULT_API_VERSION}"
    base = f"{api_base}/openai/deployments/{deployment}"
    headers = {"content-type": "application/json"}
    if api_key:
        headers["api-key"] = api_key
    return Target(
        label, {task: base + path + query for task, path in TASK_PATHS.items()}, headers, None
    )


class _Deployment:
    __slots__ = ("cooled_until", "failures", "in_flight", "target")

    def __init__(self, target: Target) -> None:
        self.target = target
        self.in_flight = 0
        self.failures = 0  # consecutive
        self.cooled_until = 0.0


class OpenAICompatBackend:
    def __init__(
        self, targets: list[Target], sessions: SessionPool, cooldown: CooldownConfig
    ) -> None:
        self._deployments = [_Deployment(target) for target in targets]
        self._sessions = sessions
        self._cooldown = cooldown

    # --- choosing a deployment -----------------------------------------------------------------

    def _choose(self) -> _Deployment:
        if len(self._deployments) == 1:
            return self._deployments[0]
        now = time.monotonic()
        healthy = [d for d in self._deployments if d.cooled_until <= now]
        if not healthy:  # all cooling down: the one that recovers first is the best bet
            return min(self._deployments, key=lambda d: d.cooled_until)
        fewest = min(d.in_flight for d in healthy)
        return random.choice([d for d in healthy if d.in_flight == fewest])

    def _record(self, deployment: _Deployment, error: BaseException | None) -> None:
        if error is not None and not isinstance(error, Exception):
            return  # cancelled: the caller left, which says nothing about the deployment
        if error is None or not getattr(error, "retriable", False):
            deployment.failures = 0
            return
        deployment.failures += 1
        if deployment.failures >= self._cooldown.failures:
            deployment.failures = 0
            deployment.cooled_until = time.monotonic() + self._cooldown.seconds

    def describe(self) -> dict[str, object]:
        now = time.monotonic()
        cooled = [d.target.label for d in self._deployments if d.cooled_until > now]
        return {"cooled_down": cooled, "ready": len(cooled) < len(self._deployments)}

    async def warm_up(self) -> None:
        """Nothing to prepare: pools connect on first use."""

    # --- calls ---------------------------------------------------------------------------------

    def _payload(self, request: LLMRequest, target: Target) -> bytes:
        body = dict(request.body)
        if target.model is None:
            body.pop("model", None)
        else:
            body["model"] = target.model
        if request.stream:
            # Usage must be known for every stream: ask even when the client did not.
            options = body.get("stream_options")
            body["stream_options"] = {
                **(options if isinstance(options, dict) else {}),
                "include_usage": True,
            }
        return orjson.dumps(body)

    def _start(self, request: LLMRequest) -> tuple[_Deployment, str, aiohttp.ClientSession]:
        """The deployment a call goes to (counted in flight from now), its URL and session."""
        deployment = self._choose()
        url = deployment.target.urls[request.task]
        deployment.in_flight += 1
        return deployment, url, self._sessions.session_for(url)

    async def complete(self, request: LLMRequest, timeout_s: float) -> Completed:
        deployment, url, session = self._start(request)
        target = deployment.target
        started = time.perf_counter()
        error: BaseException | None = None
        try:
            async with asyncio.timeout(timeout_s):
                async with session.post(
                    url, data=self._payload(request, target), headers=target.headers
                ) as response:
                    body = await response.read()
                    status = response.status
                    retry_after = response.headers.get("retry-after")
            if status >= 400:
                raise upstream_status_error(status, body, retry_after, target.label)
            return Completed(
                body,
                usage_from_body(body, target.label),
                target.label,
                (time.perf_counter() - started) * 1000,
            )
        except BaseException as exc:
            error = translate_transport_error(exc, target.label, timeout_s)
            if error is exc:
                raise
            raise error from exc
        finally:
            deployment.in_flight -= 1
            self._record(deployment, error)

    async def open_stream(self, request: LLMRequest, timeout_s: float) -> Streaming:
        deployment, url, session = self._start(request)
        target = deployment.target
        started = time.perf_counter()
        response: aiohttp.ClientResponse | None = None
        try:
            async with asyncio.timeout(timeout_s):
                response = await session.post(
                    url, data=self._payload(request, target), headers=target.headers
                )
                if response.status >= 400:
                    body = await response.read()
                    raise upstream_status_error(
                        response.status, body, response.headers.get("retry-after"), target.label
                    )
                if response.content_type != SSE_CONTENT_TYPE:
                    # A JSON body or an HTML page from a proxy would reach the client as an
                    # empty "successful" stream: fail now, while a retry or fallback can help.
                    raise UpstreamError(
                        f"Upstream {target.label} answered a stream request with"
                        f" {response.content_type!r}, not server-sent events."
                    )
        except BaseException as exc:
            deployment.in_flight -= 1
            if response is not None:
                response.release()
            error = translate_transport_error(exc, target.label, timeout_s)
            self._record(deployment, error)
            if error is exc:
                raise
            raise error from exc

        finished = False
        failure: BaseException | None = None  # what ended the stream early, for the cooldown

        async def events() -> AsyncIterator[bytes]:
            nonlocal finished, failure
            try:
                async for event in sse_events(response.content.iter_any(), timeout_s):
                    yield event
            except BaseException as exc:
                failure = translate_transport_error(exc, target.label, timeout_s)
                if failure is exc:
                    raise
                raise failure from exc
            finished = True

        async def close() -> None:
            nonlocal finished
            if response is not None:
                if finished:
                    response.release()
                else:
                    response.close()  # drops the connection: the upstream sees the cancel
            if deployment.in_flight > 0:
                deployment.in_flight -= 1
            self._record(deployment, failure)  # a stream broken halfway is a failure too

        return Streaming(events(), target.label, (time.perf_counter() - started) * 1000, [close])

    async def aclose(self) -> None:
        """Sessions belong to the shared pool, closed with the runtime."""


def usage_from_body(body: bytes, label: str) -> TokenUsage | None:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise UpstreamError(f"Upstream {label} returned a body that is not JSON.") from exc
    return usage_from(document.get("usage") if isinstance(document, dict) else None)


def usage_from(usage: Any) -> TokenUsage | None:
    if not isinstance(usage, dict):
        return None
    prompt = usage.get("prompt_tokens")
    completion = usage.get("completion_tokens") or 0
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    return TokenUsage(prompt, completion)


def upstream_status_error(
    status: int, body: bytes, retry_after: str | None, label: str
) -> Exception:
    message, kind = _error_message(body)
    where = f"Upstream {label} answered {status}"
    if status == 429:
        return UpstreamRateLimited(
            f"{where}: {message}", retry_after_s=parse_retry_after(retry_after)
        )
    if status >= 500:
        return UpstreamError(f"{where}: {message}")
    if status in (401, 403):
        # The gateway's own credentials were refused: not the caller's fault, and the upstream's
        # message may quote part of the key. A 502 (after retries and fallbacks) says so.
        return UpstreamCredentialsRefused(
            f"Upstream {label} refused the gateway's credentials ({status}); check its api_key."
        )
    return UpstreamRejected(message or where, status=status, upstream_type=kind)


def _error_message(body: bytes) -> tuple[str, str | None]:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:500].decode("utf-8", "replace").strip(), None
    error = document.get("error") if isinstance(document, dict) else None
    if isinstance(error, dict):
        kind = error.get("type")
        return str(error.get("message", "")), kind if isinstance(kind, str) else None
    if isinstance(error, str):
        return error, None
    return str(document)[:500], None


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: rare from LLM APIs; fall back to our own backoff


def translate_transport_error(exc: BaseException, label: str, timeout_s: float) -> BaseException:
    """aiohttp and timeout exceptions → the gateway's upstream errors; others unchanged."""
    if isinstance(exc, TimeoutError):
        return UpstreamTimeout(f"Upstream {label} did not answer within {timeout_s:g} s.")
    if isinstance(exc, (aiohttp.ClientError, ConnectionError)):
        return UpstreamError(
            f"Upstream {label} is unreachable or dropped the connection ({type(exc).__name__})."
        )
    return exc
