"""An MLflow tracking server as the traces' destination: its experiment and OTLP endpoint.

MLflow ingests OpenTelemetry spans at `POST /v1/traces` (OTLP/HTTP, JSON or protobuf) into the
experiment named by the `x-mlflow-experiment-id` header. The experiment is configured by name
(looked up, and created if missing, through MLflow's REST API) or by id. Blocking HTTP: this is
used only from the exporter's thread.
"""

from __future__ import annotations

import base64
import http.client
import logging
import urllib.parse
from typing import Any

import orjson

from gateway.config.schema import MlflowTracingConfig

logger = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "gateway-traffic"
OTLP_TRACES_PATH = "/v1/traces"
EXPERIMENT_ID_HEADER = "x-mlflow-experiment-id"


class ExportFailed(Exception):
    """A batch did not reach MLflow. `retry` says whether sending it again may succeed."""

    def __init__(self, reason: str, *, retry: bool) -> None:
        super().__init__(reason)
        self.retry = retry


class MlflowServer:
    def __init__(self, config: MlflowTracingConfig, timeout_s: float) -> None:
        url = urllib.parse.urlsplit(config.tracking_uri)
        self._secure = url.scheme == "https"
        self._host = url.hostname or "localhost"
        self._port = url.port
        self._prefix = url.path.rstrip("/")
        self._timeout_s = timeout_s
        self._experiment_name = config.experiment or DEFAULT_EXPERIMENT
        self.experiment_id = config.experiment_id  # None until looked up
        self._headers = {"user-agent": "gateway-tracing"}
        if config.token is not None:
            self._headers["authorization"] = f"Bearer {config.token.get_secret_value()}"
        elif config.username is not None and config.password is not None:
            pair = f"{config.username}:{config.password.get_secret_value()}".encode()
            self._headers["authorization"] = f"Basic {base64.b64encode(pair).decode()}"
        self._connection: http.client.HTTPConnection | None = None

    @property
    def where(self) -> str:
        """The server and experiment, for logs (no credentials)."""
        scheme = "https" if self._secure else "http"
        port = f":{self._port}" if self._port else ""
        experiment = self.experiment_id or self._experiment_name
        return f"{scheme}://{self._host}{port}{self._prefix} (experiment {experiment})"

    def export(self, body: bytes) -> None:
        """POST one OTLP/JSON batch; ExportFailed if MLflow did not take it."""
        experiment_id = self.experiment_id or self._resolve_experiment()
        headers = {"content-type": "application/json", EXPERIMENT_ID_HEADER: experiment_id}
        status, answer = self._request("POST", OTLP_TRACES_PATH, body, headers)
        if status != 200:
            raise ExportFailed(f"HTTP {status}: {_message(answer)}", retry=_retryable(status))

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _resolve_experiment(self) -> str:
        query = urllib.parse.urlencode({"experiment_name": self._experiment_name})
        path = f"/api/2.0/mlflow/experiments/get-by-name?{query}"
        status, answer = self._request("GET", path)
        if status == 404:
            body = orjson.dumps({"name": self._experiment_name})
            status, answer = self._request("POST", "/api/2.0/mlflow/experiments/create", body)
            if status == 400 and b"RESOURCE_ALREADY_EXISTS" in answer:  # another replica won
                return self._resolve_experiment()
            found = _field(answer, "experiment_id") if status == 200 else None
        else:
            experiment = _field(answer, "experiment") if status == 200 else None
            found = experiment.get("experiment_id") if isinstance(experiment, dict) else None
        if not isinstance(found, str):
            raise ExportFailed(
                f"cannot find or create experiment {self._experiment_name!r}:"
                f" HTTP {status}: {_message(answer)}",
                retry=_retryable(status),
            )
        logger.info("tracing into MLflow experiment %s (id %s)", self._experiment_name, found)
        self.experiment_id = found
        return found

    def _request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes]:
        all_headers = {**self._headers, **(headers or {})}
        if body is not None and "content-type" not in all_headers:
            all_headers["content-type"] = "application/json"
        for attempt in (1, 2):  # a kept-alive connection the server closed: one fresh try
            connection = self._connect()
            try:
                connection.request(method, self._prefix + path, body, all_headers)
                response = connection.getresponse()
                return response.status, response.read()
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                if attempt == 2 or isinstance(exc, TimeoutError):
                    raise ExportFailed(f"{type(exc).__name__}: {exc}", retry=True) from None
        raise AssertionError("unreachable")

    def _connect(self) -> http.client.HTTPConnection:
        if self._connection is None:
            kind = http.client.HTTPSConnection if self._secure else http.client.HTTPConnection
            self._connection = kind(self._host, self._port, timeout=self._timeout_s)
        return self._connection


def _retryable(status: int) -> bool:
    return status >= 500 or status in (408, 429)


def _field(answer: bytes, name: str) -> Any:
    try:
        document = orjson.loads(answer)
    except orjson.JSONDecodeError:
        return None
    return document.get(name) if isinstance(document, dict) else None


def _message(answer: bytes) -> str:
    """The server's error message, short (MLflow's `message`, FastAPI's `detail`)."""
    for name in ("message", "detail"):
        value = _field(answer, name)
        if isinstance(value, str):
            return value[:200]
    return answer[:200].decode("utf-8", "replace")
