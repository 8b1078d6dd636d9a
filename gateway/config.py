"""The config schema: strict (unknown keys are errors) and frozen once validated.

Reading a file, interpolating `${VAR}` and turning validation errors into YAML paths is
`config_file.py`'s job; this module only says what a valid config looks like.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

ENDPOINT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KeyConfig(Strict):
    """An API key, known by the SHA-256 of its value (or its value from the environment)."""

    id: str = Field(min_length=1, max_length=128)
    sha256: str | None = None
    key: SecretStr | None = None
    endpoints: tuple[str, ...] | None = None  # globs; None = every endpoint
    roles: tuple[Literal["user", "admin"], ...] = ("user",)
    groups: tuple[str, ...] = ()

    @field_validator("sha256")
    @classmethod
    def _lower_hex(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip().lower()
        if not SHA256_HEX.match(value):
            raise ValueError("must be 64 hex characters (the SHA-256 of the key)")
        return value


class AuthConfig(Strict):
    keys: tuple[KeyConfig, ...] = ()


class BatchingConfig(Strict):
    """Adaptive micro-batching: concurrent requests to one served model share a predict call."""

    max_batch_size: int = Field(default=64, ge=1, le=4096)
    max_wait_ms: float = Field(default=2.0, ge=0, le=1000)


class ServedModelConfig(Strict):
    model: str = Field(min_length=1)  # local MLflow model dir, or models:/name/3|@alias|/latest
    traffic: int = Field(default=100, ge=0, le=100)


class CustomEndpointConfig(Strict):
    """An MLflow pyfunc model (or several, split by traffic) loaded into the gateway."""

    name: str
    type: Literal["custom"]
    default: bool = False
    served_models: tuple[ServedModelConfig, ...]  # at least one: see config_file
    batching: BatchingConfig | None = None
    max_concurrency: int = Field(default=4, ge=1, le=256)  # predict threads per served model

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not ENDPOINT_NAME.match(value):
            raise ValueError(
                "must be 1-63 characters of letters, digits, '.', '_' or '-',"
                " starting with a letter or digit"
            )
        return value


# Later endpoint types (foundation, external) join this as a union discriminated by `type`.
EndpointConfig = CustomEndpointConfig


class ServerConfig(Strict):
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    expose_stack_traces: bool = False  # include model stack traces in error bodies (debug only)


class GatewayConfig(Strict):
    registry_uri: str | None = None
    auth: AuthConfig | None = None  # None: the gateway runs open (and says so loudly)
    server: ServerConfig = ServerConfig()
    endpoints: tuple[EndpointConfig, ...] = ()
