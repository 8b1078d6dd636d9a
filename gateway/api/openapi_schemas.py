"""The JSON Schemas (OpenAPI 3.1 dialect) of the bodies the gateway reads and writes.

They describe what the handlers accept and answer, not all of what the protocols allow: OpenAI and
Anthropic bodies are passed through to upstreams, so their schemas name the fields the gateway
itself checks and leave every other field open (`additionalProperties` is allowed).
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


OPEN: Schema = {"type": "object", "additionalProperties": True}
_STRING_OR_NULL: Schema = {"type": ["string", "null"]}
_POSITIVE_INT: Schema = {"type": "integer", "minimum": 1}
_TEXT_OR_TEXTS: Schema = {
    "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]
}

# --- errors -----------------------------------------------------------------------------------

_ERRORS: dict[str, Schema] = {
    "MlflowError": {
        "type": "object",
        "description": "MLflow scoring-server error. A model's error may add MLflow's `sqlstate`"
        " and `error_class`; a refused reload adds `issues`.",
        "required": ["error_code", "message"],
        "properties": {
            "error_code": {"type": "string", "examples": ["ENDPOINT_NOT_FOUND"]},
            "message": {"type": "string"},
            "stack_trace": {"type": "string"},
            "issues": {"type": "array", "items": {"type": "string"}},
        },
        "additionalProperties": {"type": "string"},
    },
    "OpenAIError": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type"],
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string", "examples": ["invalid_request_error"]},
                    "param": _STRING_OR_NULL,
                    "code": _STRING_OR_NULL,
                },
            }
        },
    },
    "AnthropicError": {
        "type": "object",
        "required": ["type", "error"],
        "properties": {
            "type": {"const": "error"},
            "error": {
                "type": "object",
                "required": ["type", "message"],
                "properties": {
                    "type": {"type": "string", "examples": ["invalid_request_error"]},
                    "message": {"type": "string"},
                },
            },
        },
    },
}

# --- MLflow scoring ---------------------------------------------------------------------------

_SCORING: dict[str, Schema] = {
    "ScoringRequest": {
        "type": "object",
        "description": "Exactly one of dataframe_split, dataframe_records, instances, inputs"
        " (plus optional params), as `mlflow models serve` takes; on an LLM endpoint, or an"
        " MLflow model with an LLM signature, the OpenAI body of its task (messages, prompt or"
        " input).",
        "properties": {
            "dataframe_split": {
                "type": "object",
                "properties": {
                    "columns": {"type": "array", "items": {"type": "string"}},
                    "index": {"type": "array"},
                    "data": {"type": "array"},
                },
            },
            "dataframe_records": {"type": "array", "items": {"type": "object"}},
            "instances": {},
            "inputs": {},
            "params": {"type": "object"},
            "messages": {"type": "array", "items": {"type": "object"}},
            "prompt": _TEXT_OR_TEXTS,
            "input": _TEXT_OR_TEXTS,
        },
        "additionalProperties": True,
        "examples": [{"dataframe_split": {"columns": ["x"], "data": [[1.0]]}}],
    },
    "Predictions": {
        "type": "object",
        "required": ["predictions"],
        "properties": {"predictions": {"description": "The model's output, as JSON."}},
    },
}

# --- OpenAI -----------------------------------------------------------------------------------

_USAGE: Schema = {
    "type": "object",
    "properties": {
        "prompt_tokens": {"type": "integer"},
        "completion_tokens": {"type": "integer"},
        "total_tokens": {"type": "integer"},
    },
    "additionalProperties": True,
}
_COMMON_REQUEST: dict[str, Schema] = {
    "model": {"type": "string", "minLength": 1, "description": "The endpoint to call."},
    "stream": {"type": "boolean", "default": False},
    "stream_options": {
        "type": "object",
        "properties": {"include_usage": {"type": "boolean"}},
        "additionalProperties": True,
    },
    "max_tokens": _POSITIVE_INT,
}


def _completion(kind: str) -> Schema:
    """A chat or text completion as upstreams answer it (relayed as it came)."""
    return {
        "type": "object",
        "required": ["choices"],
        "properties": {
            "id": {"type": "string"},
            "object": {"type": "string", "examples": [kind]},
            "created": {"type": "integer"},
            "model": {"type": "string"},
            "choices": {"type": "array", "items": OPEN},
            "usage": _USAGE,
        },
        "additionalProperties": True,
    }


_OPENAI: dict[str, Schema] = {
    "ChatMessage": {
        "type": "object",
        "required": ["role"],
        "properties": {
            "role": {"type": "string", "examples": ["system", "user", "assistant", "tool"]},
            "content": {"anyOf": [{"type": "string"}, {"type": "array"}, {"type": "null"}]},
            "name": {"type": "string"},
            "tool_calls": {"type": "array", "items": OPEN},
            "tool_call_id": {"type": "string"},
        },
        "additionalProperties": True,
    },
    "ChatCompletionRequest": {
        "type": "object",
        "required": ["model", "messages"],
        "properties": {
            **_COMMON_REQUEST,
            "messages": {"type": "array", "minItems": 1, "items": ref("ChatMessage")},
            "max_completion_tokens": _POSITIVE_INT,
            "temperature": {"type": "number"},
            "tools": {"type": "array", "items": OPEN},
        },
        "additionalProperties": True,
    },
    "ChatCompletion": _completion("chat.completion"),
    "CompletionRequest": {
        "type": "object",
        "required": ["model", "prompt"],
        "properties": {**_COMMON_REQUEST, "prompt": _TEXT_OR_TEXTS},
        "additionalProperties": True,
    },
    "Completion": _completion("text_completion"),
    "EmbeddingRequest": {
        "type": "object",
        "required": ["model", "input"],
        "properties": {
            "model": _COMMON_REQUEST["model"],
            "input": _TEXT_OR_TEXTS,
            "encoding_format": {"type": "string", "enum": ["float", "base64"]},
            "dimensions": _POSITIVE_INT,
            "stream": {"const": False, "description": "Embeddings cannot be streamed."},
        },
        "additionalProperties": True,
    },
    "EmbeddingList": {
        "type": "object",
        "required": ["data"],
        "properties": {
            "object": {"type": "string", "examples": ["list"]},
            "data": {"type": "array", "items": OPEN},
            "model": {"type": "string"},
            "usage": _USAGE,
        },
        "additionalProperties": True,
    },
    "ModelList": {
        "type": "object",
        "required": ["object", "data"],
        "properties": {
            "object": {"const": "list"},
            "data": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["id", "object", "created", "owned_by", "task"],
                    "properties": {
                        "id": {"type": "string"},
                        "object": {"const": "model"},
                        "created": {"type": "integer"},
                        "owned_by": {"type": "string"},
                        "task": {"enum": ["chat", "completions", "embeddings", "custom"]},
                    },
                },
            },
        },
    },
    "EventStream": {
        "type": "object",
        "description": "One server-sent event (this schema describes each event of the stream,"
        " as OpenAPI 3.2's itemSchema does). `data` is a JSON chunk; the stream ends with"
        " `data: [DONE]` (OpenAI) or a `message_stop` event (Anthropic); an error after the"
        " first byte arrives as an event whose data is the error body.",
        "required": ["data"],
        "properties": {
            "event": {"type": "string"},
            "data": {"type": "string"},
            "id": {"type": "string"},
            "retry": {"type": "integer"},
        },
    },
}

# --- Anthropic --------------------------------------------------------------------------------

_ANTHROPIC: dict[str, Schema] = {
    "AnthropicMessagesRequest": {
        "type": "object",
        "required": ["model", "messages", "max_tokens"],
        "properties": {
            "model": {"type": "string", "minLength": 1, "description": "A chat endpoint."},
            "messages": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["role", "content"],
                    "properties": {
                        "role": {"enum": ["user", "assistant"]},
                        "content": {"anyOf": [{"type": "string"}, {"type": "array"}]},
                    },
                    "additionalProperties": True,
                },
            },
            "max_tokens": _POSITIVE_INT,
            "system": {"anyOf": [{"type": "string"}, {"type": "array"}]},
            "stream": {"type": "boolean", "default": False},
        },
        "additionalProperties": True,
    },
    "AnthropicMessage": {
        "type": "object",
        "required": ["type", "role", "content"],
        "properties": {
            "id": {"type": "string"},
            "type": {"const": "message"},
            "role": {"const": "assistant"},
            "model": {"type": "string"},
            "content": {"type": "array", "items": OPEN},
            "stop_reason": _STRING_OR_NULL,
            "usage": OPEN,
        },
        "additionalProperties": True,
    },
}

# --- health and admin -------------------------------------------------------------------------

_OPERATIONS: dict[str, Schema] = {
    "Index": {
        "type": "object",
        "required": ["name", "version", "links"],
        "properties": {
            "name": {"const": "gateway"},
            "version": {"type": "string"},
            "links": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    },
    "Status": {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"type": "string"}},
    },
    "Ready": {
        "type": "object",
        "required": ["ready"],
        "properties": {
            "ready": {"type": "boolean"},
            "config_version": {"type": "string"},
            "endpoints": {"type": "object", "description": "Each loaded endpoint, described."},
            "error": {**_STRING_OR_NULL, "description": "Why loading failed, when it did."},
        },
    },
    "Version": {
        "type": "object",
        "required": ["gateway", "mlflow"],
        "properties": {"gateway": {"type": "string"}, "mlflow": {"type": "string"}},
    },
    "UsageRows": {
        "type": "object",
        "required": ["data"],
        "properties": {"data": {"type": "array", "items": OPEN}},
    },
    "UsageEvents": {
        "type": "object",
        "required": ["data"],
        "properties": {
            "data": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["request_id", "principal", "endpoint", "status"],
                    "properties": {
                        "request_id": {"type": "string"},
                        "principal": {"type": "string"},
                        "endpoint": {"type": "string"},
                        "status": {"type": "integer"},
                    },
                    "additionalProperties": True,
                },
            }
        },
    },
    "ConfigState": {
        "type": "object",
        "required": ["version", "endpoints", "config"],
        "properties": {
            "version": {"type": "string"},
            "active": {"anyOf": [ref("Applied"), {"type": "null"}]},
            "reloads": {"type": "integer"},
            "failed_reloads": {"type": "integer"},
            "last_error": {
                "anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "null"}],
                "description": "The issues of the last refused reload.",
            },
            "last_error_at": {"type": ["number", "null"]},
            "endpoints": {"type": "object"},
            "config": {"type": "object", "description": "The running config, secrets redacted."},
        },
    },
    "Applied": {
        "type": "object",
        "required": ["version", "applied_at", "changes"],
        "properties": {
            "applied": {"const": True},
            "version": {"type": "string"},
            "applied_at": {"type": "number"},
            "changes": {
                "type": "object",
                "description": "section → added/removed/changed → names",
                "additionalProperties": {
                    "type": "object",
                    "additionalProperties": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
    },
}

SCHEMAS: dict[str, Schema] = {
    **_ERRORS,
    **_SCORING,
    **_OPENAI,
    **_ANTHROPIC,
    **_OPERATIONS,
}
