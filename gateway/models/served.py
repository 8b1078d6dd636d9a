"""Custom endpoints: MLflow pyfunc models loaded into the gateway and scored off the event loop."""

from __future__ import annotations

import asyncio
import bisect
import logging
import os
import random
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gateway.config.schema import BatchingConfig, CustomEndpointConfig, ServedModelConfig
from gateway.errors import GatewayError
from gateway.models import scoring
from gateway.models.batching import MicroBatcher
from gateway.models.resolve import ResolvedModel, resolve_model

logger = logging.getLogger(__name__)

CHAT_MODEL_LOADER = "mlflow.pyfunc.loaders.chat_model"


class ServedModel:
    """One loaded pyfunc model, its predict threads and (optionally) its micro-batcher.

    Its lineage is what the ledger records of every answer: `label` (`models:/name/3`, or the
    configured path), the registry version's `run_id` and the MLmodel file's `model_uuid`.
    """

    def __init__(
        self,
        resolved: ResolvedModel,
        pyfunc: Any,
        max_concurrency: int,
        batching: BatchingConfig | None,
    ):
        self.label = resolved.label
        self.version = resolved.version
        metadata = pyfunc.metadata
        # A local model names its run in its MLmodel file, if it was logged from one.
        self.run_id: str = resolved.run_id or getattr(metadata, "run_id", None) or ""
        self.model_uuid: str = getattr(metadata, "model_uuid", None) or ""
        self.pyfunc = pyfunc
        self.reuse_key: ReuseKey | None = None  # where it came from, for reuse by a reload
        flavor = pyfunc.metadata.flavors.get("python_function", {})
        self.is_chat = flavor.get("loader_module") == CHAT_MODEL_LOADER
        self._executor = ThreadPoolExecutor(
            max_concurrency, thread_name_prefix=f"predict-{self.label}"
        )
        self._batcher: MicroBatcher[scoring.ScoringRequest, bytes | GatewayError] | None = None
        if batching is not None:
            self._batcher = MicroBatcher(
                self._score_batch,
                self._executor,
                max_batch_size=batching.max_batch_size,
                max_wait_s=batching.max_wait_ms / 1000,
            )

    def describe(self) -> dict[str, object]:
        """What `/ready` shows of this model."""
        description: dict[str, object] = {"model": self.label}
        if self.version:
            description["version"] = self.version
        if self.run_id:
            description["run_id"] = self.run_id
        if self.model_uuid:
            description["model_uuid"] = self.model_uuid
        if self._batcher is not None:
            description["batches"] = self._batcher.batches_run
            description["batched_requests"] = self._batcher.items_run
        return description

    async def score(self, request: scoring.ScoringRequest) -> bytes:
        """The JSON body of a successful prediction; raises GatewayError on failure."""
        shape = request.batch_shape() if self._batcher is not None else None
        if shape is None or self._batcher is None:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, scoring.score, self.pyfunc, request)
        outcome = await self._batcher.submit(request, shape)
        if isinstance(outcome, GatewayError):
            raise outcome
        return outcome

    def _score_batch(
        self, requests: Sequence[scoring.ScoringRequest]
    ) -> list[bytes | GatewayError]:
        return scoring.score_batch(self.pyfunc, requests)

    async def aclose(self) -> None:
        if self._batcher is not None:
            await self._batcher.aclose()
        self.discard()

    def discard(self) -> None:
        """Release the predict threads of a model that never served (or has stopped)."""
        self._executor.shutdown(wait=False, cancel_futures=True)


class CustomEndpoint:
    """A named endpoint splitting its traffic across served models by weight."""

    kind = "custom"

    def __init__(self, name: str, served: list[ServedModel], weights: list[int]) -> None:
        self.name = name
        self.served = served
        self.weights = tuple(weights)  # of each served model, in order
        # Reachable through /v1/chat/completions when every served model is a ChatModel.
        self.is_chat = all(model.is_chat for model in served)
        self._cumulative: list[int] = []
        total = 0
        for weight in weights:
            total += weight
            self._cumulative.append(total)
        self._total = total

    def describe(self) -> list[dict[str, object]]:
        return [served.describe() for served in self.served]

    def pick(self) -> ServedModel:
        if len(self.served) == 1:
            return self.served[0]
        ticket = random.random() * self._total
        return self.served[bisect.bisect_right(self._cumulative, ticket)]

    async def aclose(self) -> None:
        for served in self.served:
            await served.aclose()

    def discard(self) -> None:
        for served in self.served:
            served.discard()


# (the model's identity: `models:/name/3` or its folder, max_concurrency, batching)
ReuseKey = tuple[str, int, BatchingConfig | None]


def load_served_model(
    spec: ServedModelConfig,
    endpoint: CustomEndpointConfig,
    *,
    base_dir: Path,
    registry_uri: str | None,
    reuse: Mapping[ReuseKey, ServedModel] | None = None,
) -> ServedModel:
    """Resolve and load one model (blocking: call it from a thread). Raises ValueError.

    A model already loaded by the running config, from the same place with the same serving
    settings, is taken from `reuse` instead of being loaded again (a reload keeps it warm).
    """
    resolved = resolve_model(spec.model, base_dir=base_dir, registry_uri=registry_uri)
    key: ReuseKey = (resolved.identity, endpoint.max_concurrency, endpoint.batching)
    if reuse is not None and key in reuse:
        return reuse[key]
    # MLflow's scoring server sets this; some flavors behave differently when serving.
    os.environ.setdefault("_MLFLOW_IS_IN_SERVING_ENVIRONMENT", "true")
    import mlflow.pyfunc

    try:
        pyfunc = mlflow.pyfunc.load_model(resolved.load_uri)
    except Exception as exc:
        raise ValueError(
            f"cannot load {spec.model!r}: {_load_error(exc, resolved.load_uri)}"
        ) from exc
    _warm_up(pyfunc, spec.model)
    served = ServedModel(resolved, pyfunc, endpoint.max_concurrency, endpoint.batching)
    served.reuse_key = key
    return served


def _load_error(exc: Exception, load_uri: str) -> str:
    """Why a model did not load. From a local folder, the whole message (it is about the model);
    from a remote store (s3://, https://, a registry's proxied artifacts), the exception's type and
    MLflow error code only: its message may quote the remote server's response."""
    scheme = urlsplit(load_uri).scheme
    if scheme in ("", "file"):
        return f"{type(exc).__name__}: {exc}"
    code = getattr(exc, "error_code", None)
    return f"{type(exc).__name__} ({code})" if code else type(exc).__name__


def _warm_up(pyfunc: Any, spec: str) -> None:
    """One prediction on the model's input example, if it has one, before it takes traffic:
    lazy initialisation then happens here, not in a caller's request. A failure is logged,
    not fatal: MLflow itself accepts models whose example does not predict."""
    try:
        example = pyfunc.input_example
    except Exception:
        return
    if example is None:
        return
    try:
        pyfunc.predict(example)
    except Exception as exc:
        logger.warning("warm-up prediction of %s failed: %s", spec, exc)
