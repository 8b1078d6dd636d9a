"""Upstream providers: one module per wire format, found through one registry.

To add a provider, write its backend (an `LLMBackend`, see `base.py`) in a module of its own and
register a factory for its name in `PROVIDERS`. Every name not registered here is served through
litellm (`litellm.py`), which translates other wire formats (Anthropic, Bedrock, Gemini, ...).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from gateway.config.schema import ExternalEndpointConfig, LLMEndpointConfig
from gateway.providers import openai_compat
from gateway.providers.base import LLMBackend, ProviderFactory
from gateway.providers.http_pool import SessionPool

# Hosted providers whose API is OpenAI's wire format are called directly, without litellm.
PROVIDERS: Mapping[str, ProviderFactory] = MappingProxyType(
    {
        "openai": openai_compat.hosted_backend("https://api.openai.com/v1"),
        "azure": openai_compat.azure_backend,
        "mistral": openai_compat.hosted_backend("https://api.mistral.ai/v1"),
        "groq": openai_compat.hosted_backend("https://api.groq.com/openai/v1"),
        "together_ai": openai_compat.hosted_backend("https://api.together.xyz/v1"),
        "fireworks_ai": openai_compat.hosted_backend("https://api.fireworks.ai/inference/v1"),
        "deepseek": openai_compat.hosted_backend("https://api.deepseek.com/v1"),
        "perplexity": openai_compat.hosted_backend("https://api.perplexity.ai"),
        "openrouter": openai_compat.hosted_backend("https://openrouter.ai/api/v1"),
        "xai": openai_compat.hosted_backend("https://api.x.ai/v1"),
        "openai_compatible": openai_compat.hosted_backend(None),  # any other: needs api_base
    }
)


def backend_for(config: LLMEndpointConfig, sessions: SessionPool) -> LLMBackend:
    """The backend of an LLM endpoint; ValueError when its config cannot be served."""
    if not isinstance(config, ExternalEndpointConfig):
        return openai_compat.foundation_backend(config, sessions)
    factory = PROVIDERS.get(config.provider)
    if factory is not None:
        return factory(config, sessions)
    from gateway.providers.litellm import LiteLLMBackend  # imports litellm only when called

    return LiteLLMBackend(config)
