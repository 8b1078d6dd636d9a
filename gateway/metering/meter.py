"""The meter every admitted call goes through, whatever its protocol: it holds the call's
reservation and, when the call ends, settles it to what was used and records the usage event.

`finish` returns once the event is in the ledger's spool (written, or fsynced with
`usage.durability: fsync`), so a response sent after it has its usage on record.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from gateway.auth.keys import Principal
from gateway.http import Request
from gateway.inference_tables import CapturePolicy
from gateway.limits import Reservation
from gateway.limits.governor import UNLIMITED, Governor
from gateway.metering.recorder import UsageRecorder
from gateway.metering.usage import Price, TokenUsage, UsageEvent
from gateway.tracing import TracePolicy, TraceRecord, caller_span

Demand = Callable[[], Awaitable[tuple[int, float]]]  # the most a call may use: (tokens, USD)


class Meter:
    """Times one call and turns it into one settled reservation and one usage event."""

    __slots__ = (
        "_call_ended",
        "_call_started",
        "_endpoint",
        "_fallback",
        "_fallbacks",
        "_governor",
        "_model_uuid",
        "_price",
        "_principal",
        "_request",
        "_run_id",
        "_sampled",
        "_served",
        "_served_endpoint",
        "_trace_kind",
        "_trace_max_bytes",
        "_usage",
        "_wall",
        "reservation",
    )

    def __init__(
        self,
        request: Request,
        usage: UsageRecorder,
        governor: Governor,
        principal: Principal,
        endpoint: str,
        price: Price | None = None,
        capture: CapturePolicy | None = None,
        trace: TracePolicy | None = None,
    ) -> None:
        self._request = request
        # What the call keeps, if the inference table or tracing samples it: the app hands it
        # the response as sent, `finish` the usage event (and the trace's timings).
        self._sampled = request.tap = usage.sample(capture, trace)
        self._trace_kind = trace.kind if trace is not None else ""
        self._trace_max_bytes = trace.max_payload_bytes if trace is not None else 0
        self._call_started = self._call_ended = 0.0  # perf_counter: the model/upstream call
        self._usage = usage
        self._governor = governor
        self._principal = principal
        self._endpoint = endpoint
        self._price = price
        self._served = ""
        self._run_id = ""
        self._model_uuid = ""
        self._served_endpoint = endpoint
        self._fallback = False
        self._wall = time.time() - (time.perf_counter() - request.started)
        self.reservation = UNLIMITED
        self._fallbacks: dict[str, Reservation] = {}  # by endpoint: their own limits

    async def admit(self, demand: Demand | None = None) -> None:
        """Count the call against every rule that applies (429 or 503 when refused)."""
        self.reservation = await self._governor.admit(self._principal, self._endpoint, demand)

    async def admit_fallback(self, endpoint: str, demand: Demand) -> None:
        """Count the call against a fallback endpoint's own limits before it is tried."""
        self._fallbacks[endpoint] = await self._governor.admit(
            self._principal, endpoint, demand, fallback=True
        )

    def served(
        self,
        served: str,
        *,
        endpoint: str | None = None,
        price: Price | None = None,
        run_id: str = "",
        model_uuid: str = "",
    ) -> None:
        """Who answered: a served model or deployment, of a fallback `endpoint` if not the one
        called (then its price is what the call costs); of an MLflow model, its lineage."""
        self._served, self._run_id, self._model_uuid = served, run_id, model_uuid
        if endpoint is not None and endpoint != self._endpoint:
            self._served_endpoint, self._price, self._fallback = endpoint, price, True

    def call_started(self) -> None:
        """The model or upstream call (with its retries and fallbacks) begins: for its span."""
        self._call_started = time.perf_counter()

    def call_ended(self) -> None:
        """The call's answer is in (for a stream: its last chunk; else `finish` marks it)."""
        self._call_ended = time.perf_counter()

    @property
    def served_endpoint(self) -> str:
        return self._served_endpoint

    @property
    def served_label(self) -> str:
        return self._served

    @property
    def fallback_used(self) -> bool:
        return self._fallback

    def overhead_ms(self, upstream_ms: float) -> float:
        return max(0.0, (time.perf_counter() - self._request.started) * 1000 - upstream_ms)

    async def shielded(self, ending: Coroutine[Any, Any, None]) -> None:
        """Run `ending` to completion even if the caller is cancelled meanwhile."""
        await asyncio.shield(self._usage.keep(ending))

    async def finish(
        self,
        status: int,
        *,
        usage: TokenUsage | None = None,
        rows: int = 0,
        overhead_ms: float = 0.0,
    ) -> None:
        """Settle the reservation to what the call used and record its usage event (and, if
        the call is sampled, complete what it keeps: see `SampledCall`)."""
        latency_ms = (time.perf_counter() - self._request.started) * 1000
        price = self._price
        cost = price.cost(usage) if price is not None and usage is not None else 0.0
        tokens = usage.total_tokens if usage else 0
        await self._governor.settle(self.reservation, tokens=tokens, cost_usd=cost)
        for endpoint, reservation in self._fallbacks.items():
            # Only the fallback that answered used anything of its endpoint's limits.
            used = endpoint == self._served_endpoint and self._fallback
            await self._governor.settle(
                reservation, tokens=tokens if used else 0, cost_usd=cost if used else 0.0
            )
        event = UsageEvent(
            request_id=self._request.request_id,
            time=self._wall,
            principal=self._principal.id,
            groups=self._principal.groups,
            endpoint=self._endpoint,
            served=self._served,
            route=self._request.route,
            status=status,
            latency_ms=latency_ms,
            overhead_ms=overhead_ms,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            estimated=usage.estimated if usage else False,
            rows=rows,
            cost_usd=cost,
            fallback_used=self._fallback,
            client_request_id=self._request.client_request_id,
            principal_kind=self._principal.kind,
            served_endpoint=self._served_endpoint if self._served else "",
            served_run_id=self._run_id,
            model_uuid=self._model_uuid,
            tags=self._request.tags,
        )
        sampled = self._sampled
        if sampled is not None:
            trace = self._trace_record(event) if sampled.traced else None
            sampled.finished(event, self._request.raw_body, trace)
        await self._usage.record(event, self._principal)

    def _trace_record(self, event: UsageEvent) -> TraceRecord:
        """The call's trace (its response is added as it is sent)."""
        started = self._request.started

        def wall_ns(perf: float) -> int:
            return int((self._wall + (perf - started)) * 1e9)

        ended = time.perf_counter()
        call_started = self._call_started
        return TraceRecord(
            event=event,
            kind=self._trace_kind,
            start_ns=wall_ns(started),
            end_ns=wall_ns(ended),
            call_start_ns=wall_ns(call_started) if call_started else 0,
            call_end_ns=wall_ns(self._call_ended or ended) if call_started else 0,
            request=self._request.raw_body,
            response=b"",
            max_preview_bytes=self._trace_max_bytes,
            price=self._price,
            caller=caller_span(self._request.header(b"traceparent")),
        )
