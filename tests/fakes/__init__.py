"""Fake upstream LLM servers speaking the real OpenAI and Anthropic wire formats over real HTTP.

- `tests.fakes.openai_upstream.FakeOpenAI`: chat and legacy completions, embeddings, models.
- `tests.fakes.anthropic_upstream.FakeAnthropic`: the Messages API.
- `tests.fakes.server`: the shared base (background-thread server, request recording, fault
  injection) and `main()` to run a fake as its own process
  (`python -m tests.fakes.openai_upstream --port P`).
- `tests.fakes.echo`: the deterministic "model" behind both (echo reply, word-count tokens).

Nothing is imported here on purpose: `python -m tests.fakes.<fake>` must not import its own
module twice.
"""
