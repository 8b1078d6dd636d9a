"""The config schema: strict (unknown keys are errors) and frozen once validated.

Reading a file, interpolating `${VAR}` and turning validation errors into YAML paths is
`loading.py`'s job; this module only says what a valid config looks like.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

ENDPOINT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Role = Literal["user", "admin"]


class LimitsConfig(Strict):
    """Rate limits of one scope (a key, a group, an endpoint, a key on one endpoint).

    Request and token limits (prompt + completion tokens) are exact sliding windows by default:
    N per period never admits more than N in any window of that period. `algorithm: gcra` makes
    them a smooth leaky bucket instead (O(1) state, but a burst of N from idle plus the refill, so
    up to 2N in one period). `max_concurrent` caps calls in flight.
    """

    requests_per_second: float | None = Field(default=None, gt=0)
    requests_per_minute: float | None = Field(default=None, gt=0)
    requests_per_hour: float | None = Field(default=None, gt=0)
    requests_per_day: float | None = Field(default=None, gt=0)
    tokens_per_minute: float | None = Field(default=None, gt=0)
    tokens_per_day: float | None = Field(default=None, gt=0)
    max_concurrent: int | None = Field(default=None, ge=1)
    algorithm: Literal["sliding_window", "gcra"] = "sliding_window"  # of the rate limits above


class BudgetConfig(Strict):
    """Spend caps in USD per calendar day / month (UTC), from the same prices that meter usage."""

    usd_per_day: float | None = Field(default=None, gt=0)
    usd_per_month: float | None = Field(default=None, gt=0)


class KeyConfig(Strict):
    """An API key, known by the SHA-256 of its value (or its value from the environment)."""

    id: str = Field(min_length=1, max_length=128)
    sha256: str | None = None
    key: SecretStr | None = None
    endpoints: tuple[str, ...] | None = None  # globs; None = every endpoint
    roles: tuple[Role, ...] = ("user",)
    groups: tuple[str, ...] = ()
    limits: LimitsConfig | None = None
    endpoint_limits: dict[str, LimitsConfig] = {}  # this key on one endpoint
    budget: BudgetConfig | None = None

    @field_validator("sha256")
    @classmethod
    def _lower_hex(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip().lower()
        if not SHA256_HEX.match(value):
            raise ValueError("must be 64 hex characters (the SHA-256 of the key)")
        return value


class JWTConfig(Strict):
    """OIDC / JWT bearer tokens, checked against the issuer's keys (JWKS) or one public key."""

    issuer: str
    audience: str
    jwks_url: str | None = None
    public_key: str | None = None  # PEM
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    subject_claim: str = "sub"
    groups_claim: str = "groups"
    leeway_s: float = Field(default=30, ge=0, le=600)
    jwks_refresh_min_interval_s: float = Field(default=30, ge=0)


class AuthConfig(Strict):
    keys: tuple[KeyConfig, ...] = ()
    jwt: JWTConfig | None = None


class GroupConfig(Strict):
    """Policy shared by the members of a group (keys that list it, JWT subjects whose token
    names it): the endpoints they may call, roles, limits shared by all members, a budget."""

    endpoints: tuple[str, ...] | None = None
    roles: tuple[Role, ...] = ()
    limits: LimitsConfig | None = None
    budget: BudgetConfig | None = None


class LimitsStoreConfig(Strict):
    store: str = "memory://"  # or redis://host:port/db (shared by every gateway process)
    on_store_error: Literal["deny", "allow"] = "deny"
    default_max_tokens: int = Field(default=1024, ge=1)  # reserved when a request sets none


class UsageConfig(Strict):
    ledger: str = "sqlite:///gateway-usage.db"  # or postgresql://user@host/db
    spool_dir: str = "gateway-spool"  # append-only; written before a response is acknowledged
    # write: in the kernel before the response (survives the process being killed, SIGKILL
    # included); fsync: on the disk before the response (survives the host losing power too,
    # for ~0.2 ms more per request at low concurrency: concurrent requests share one fsync).
    durability: Literal["write", "fsync"] = "write"
    batch_size: int = Field(default=500, ge=1)
    flush_interval_ms: float = Field(default=200, gt=0)


class InferenceTableConfig(Strict):
    """Sampled request and response payloads as Parquet (`path` unset: none are kept); read at
    start-up only, except `sample_rate` and `max_payload_bytes` as endpoints override them."""

    path: str | None = None  # a folder; relative to the config file's
    sample_rate: float = Field(default=1.0, ge=0, le=1)
    max_payload_bytes: int = Field(default=64 * 1024, ge=1)  # longer: truncated and flagged
    flush_interval_s: float = Field(default=10.0, gt=0)  # each buffer becomes a file this often
    max_file_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)  # or sooner when this big
    max_queued_rows: int = Field(default=10_000, ge=1)  # beyond: rows are dropped and counted


class EndpointInferenceTableConfig(Strict):
    enabled: bool = True
    sample_rate: float | None = Field(default=None, ge=0, le=1)
    max_payload_bytes: int | None = Field(default=None, ge=1)


class MlflowTracingConfig(Strict):
    """Where traces go: an MLflow tracking server's OTLP endpoint (`/v1/traces`)."""

    tracking_uri: str = Field(min_length=1)  # http(s)://host:port of `mlflow server`
    experiment: str | None = None  # by name, created if missing (default: gateway-traffic)
    experiment_id: str | None = None  # or by id (then no lookup is made)
    token: SecretStr | None = None  # sent as `Authorization: Bearer` (Databricks, auth proxies)
    username: str | None = None  # with `password`: HTTP basic auth (`mlflow server --app-name
    password: SecretStr | None = None  # basic-auth`)

    @field_validator("tracking_uri")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL of an MLflow tracking server")
        return value.rstrip("/")


class TracingConfig(Strict):
    """Sampled calls as MLflow traces (`mlflow` unset: none are sent); read at start-up only,
    except `sample_rate` and `max_preview_bytes` as endpoints override them."""

    mlflow: MlflowTracingConfig | None = None
    sample_rate: float = Field(default=1.0, ge=0, le=1)
    max_preview_bytes: int = Field(default=8 * 1024, ge=1)  # longer payloads: cut, flagged
    batch_size: int = Field(default=100, ge=1, le=10_000)  # traces per export request
    flush_interval_s: float = Field(default=1.0, gt=0)  # a partial batch waits at most this
    max_queued_traces: int = Field(default=10_000, ge=1)  # beyond: traces dropped and counted
    timeout_s: float = Field(default=5.0, gt=0, le=120)  # per export request


class EndpointTracingConfig(Strict):
    enabled: bool = True
    sample_rate: float | None = Field(default=None, ge=0, le=1)
    max_preview_bytes: int | None = Field(default=None, ge=1)


class BatchingConfig(Strict):
    """Adaptive micro-batching: concurrent requests to one served model share a predict call."""

    max_batch_size: int = Field(default=64, ge=1, le=4096)
    max_wait_ms: float = Field(default=2.0, ge=0, le=1000)


class ServedModelConfig(Strict):
    model: str = Field(min_length=1)  # local MLflow model dir, or models:/name/3|@alias|/latest
    traffic: int = Field(default=100, ge=0, le=100)


class EndpointBase(Strict):
    name: str
    inference_table: EndpointInferenceTableConfig | None = None  # overrides the top level's
    tracing: EndpointTracingConfig | None = None  # overrides the top level's

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not ENDPOINT_NAME.match(value):
            raise ValueError(
                "must be 1-63 characters of letters, digits, '.', '_' or '-',"
                " starting with a letter or digit"
            )
        return value


class CustomEndpointConfig(EndpointBase):
    """An MLflow pyfunc model (or several, split by traffic) loaded into the gateway."""

    type: Literal["custom"]
    default: bool = False
    served_models: tuple[ServedModelConfig, ...]  # at least one: see config_file
    batching: BatchingConfig | None = None
    limits: LimitsConfig | None = None
    max_concurrency: int = Field(default=4, ge=1, le=256)  # predict threads per served model


Task = Literal["chat", "completions", "embeddings"]


class PricingConfig(Strict):
    """USD per million tokens; what usage is billed at."""

    input_per_million: float = Field(ge=0)
    output_per_million: float = Field(default=0.0, ge=0)


class ProvisionedConfig(Strict):
    """Reserved capacity: `max_concurrent` calls in flight; others queue briefly, then 429."""

    max_concurrent: int = Field(ge=1, le=100_000)
    queue_timeout_s: float = Field(default=1.0, ge=0, le=60)


class CooldownConfig(Strict):
    """A deployment failing `failures` times in a row is skipped for `seconds`."""

    failures: int = Field(default=3, ge=1)
    seconds: float = Field(default=30.0, gt=0)


def _none_if_blank(value: str | None) -> str | None:
    return value if value and value.strip() else None


class LLMEndpointBase(EndpointBase):
    task: Task
    limits: LimitsConfig | None = None
    pricing: PricingConfig | None = None
    fallbacks: tuple[str, ...] = ()  # endpoint names, tried in order when this one fails
    timeout_s: float = Field(default=60.0, gt=0, le=3600)
    retries: int = Field(default=2, ge=0, le=10)
    provisioned: ProvisionedConfig | None = None
    cooldown: CooldownConfig = CooldownConfig()


class DeploymentConfig(Strict):
    """One replica of a self-hosted model behind an OpenAI-compatible server."""

    api_base: str = Field(min_length=1)  # e.g. http://10.0.0.5:8000/v1
    model: str = Field(min_length=1)  # the upstream's model name
    api_key: SecretStr | None = None

    @field_validator("api_base")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")


class FoundationEndpointConfig(LLMEndpointBase):
    """A self-hosted open model (vLLM, TGI, Ollama, llama.cpp) speaking the OpenAI wire format."""

    type: Literal["foundation"]
    deployments: tuple[DeploymentConfig, ...]  # at least one: see config_file


class ExternalEndpointConfig(LLMEndpointBase):
    """A hosted provider: OpenAI-format ones are called directly, others through litellm."""

    type: Literal["external"]
    provider: str = Field(min_length=1)  # openai, azure, anthropic, bedrock, gemini, mistral, ...
    model: str = Field(min_length=1)
    api_key: SecretStr | None = None
    api_base: str | None = None
    api_version: str | None = None  # Azure OpenAI
    options: dict[
        str, str | int | float | bool
    ] = {}  # extra provider settings, e.g. aws_region_name

    @field_validator("api_base", "api_version")
    @classmethod
    def _blank_is_unset(cls, value: str | None) -> str | None:
        value = _none_if_blank(value)
        return value.rstrip("/") if value else None


EndpointConfig = Annotated[
    CustomEndpointConfig | FoundationEndpointConfig | ExternalEndpointConfig,
    Field(discriminator="type"),
]
LLMEndpointConfig = FoundationEndpointConfig | ExternalEndpointConfig


Access = Literal["open", "key", "admin"]


class RouteAccessConfig(Strict):
    """Who may read the operational routes: anyone who can reach the gateway (`open`), any
    authenticated caller (`key`), or admins only."""

    metrics: Access = "open"  # /metrics
    docs: Access = "open"  # /docs and /openapi.json
    version: Access = "open"  # /version


class ServerConfig(Strict):
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    expose_stack_traces: bool = False  # include model stack traces in error bodies (debug only)
    access: RouteAccessConfig = RouteAccessConfig()
    # The HTTP connection (gateway/server/): fixed at start, a reload does not change them.
    max_header_bytes: int = Field(default=64 * 1024, ge=1024, le=16 * 1024 * 1024)  # else 431
    max_headers: int = Field(default=100, ge=8, le=10_000)  # header lines; more: 431
    header_timeout_s: float = Field(default=10.0, gt=0)  # to finish a request head; else 408
    keep_alive_s: float = Field(default=5.0, gt=0)  # an idle keep-alive connection is closed
    max_connections: int = Field(default=2048, ge=1)  # per process; beyond: 503


class RegistryConfig(Strict):
    poll_s: float = Field(default=30.0, ge=0)  # re-resolve @alias and /latest models; 0: never


BROADCAST_SECRET_MIN = 32


class ReloadConfig(Strict):
    """How reloads are triggered; read at start-up only (a reload cannot change it)."""

    watch: bool = False  # re-read the file when it changes (checked every second)
    # Reloads applied here are re-applied by every process subscribed to this Redis channel
    # (other workers, other replicas). Default: the limits store, when it is Redis.
    broadcast: str | None = None
    channel: str = "gateway:reload"
    # Signs and verifies broadcast messages (HMAC-SHA256); from the environment, never literal.
    # Unset: reloads are neither published nor followed.
    broadcast_secret: SecretStr | None = None

    @field_validator("broadcast_secret")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < BROADCAST_SECRET_MIN:
            raise ValueError(
                f"must be at least {BROADCAST_SECRET_MIN} characters"
                " (e.g. the output of `openssl rand -hex 32`)"
            )
        return value


class GatewayConfig(Strict):
    registry_uri: str | None = None
    registry: RegistryConfig = RegistryConfig()
    reload: ReloadConfig = ReloadConfig()
    auth: AuthConfig | None = None  # None: the gateway runs open (and says so loudly)
    groups: dict[str, GroupConfig] = {}
    limits: LimitsStoreConfig = LimitsStoreConfig()
    usage: UsageConfig = UsageConfig()
    inference_table: InferenceTableConfig = InferenceTableConfig()
    tracing: TracingConfig = TracingConfig()
    server: ServerConfig = ServerConfig()
    endpoints: tuple[EndpointConfig, ...] = ()
