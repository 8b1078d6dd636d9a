"""Config validation: one test per class of error, each asserting the YAML path it names."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from gateway.config.loading import load_config_file, parse_config
from gateway.config.schema import CustomEndpointConfig
from gateway.errors import ConfigError
from gateway.runtime import build_runtime

SHA = hashlib.sha256(b"k").hexdigest()


def issues_of(text: str, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, environ=environ or {})
    return [str(issue) for issue in caught.value.issues]


def endpoint(name: str = "clf", extra: str = "", model: str = "./m") -> str:
    return f"""
  - name: {name}
    type: custom
    served_models: [{{model: {model}, traffic: 100}}]{extra}"""


def test_a_minimal_config_is_valid() -> None:
    loaded = parse_config("endpoints:" + endpoint(), environ={})
    assert loaded.config.endpoints[0].name == "clf"
    assert loaded.config.auth is None
    assert len(loaded.version) == 16


def test_an_empty_file_is_a_valid_empty_config() -> None:
    assert parse_config("", environ={}).config.endpoints == ()


def test_yaml_syntax_errors_name_the_line() -> None:
    (issue,) = issues_of("endpoints:\n  - name: [unclosed\n")
    assert "invalid YAML at line" in issue


def test_a_document_that_is_not_a_mapping_is_rejected() -> None:
    assert issues_of("- a\n- b\n") == ["the config must be a YAML mapping"]


def test_unknown_keys_are_rejected_by_path() -> None:
    issues = issues_of("colour: blue\nendpoints:" + endpoint(extra="\n    batchng: {}"))
    assert "colour: unknown key" in issues
    assert "endpoints[0].batchng: unknown key" in issues


def test_missing_environment_variables_are_named_by_path() -> None:
    text = "auth:\n  keys:\n    - {id: a, key: '${NOPE}'}\nendpoints:" + endpoint()
    assert "auth.keys[0].key: environment variable NOPE is not set" in issues_of(text)


def test_interpolation_uses_the_environment_then_the_default() -> None:
    text = "registry_uri: ${REG}\nendpoints:" + endpoint(model="'${MODEL_DIR:-./fallback}'")
    loaded = parse_config(text, environ={"REG": "sqlite:///x.db"})
    assert loaded.config.registry_uri == "sqlite:///x.db"
    custom = loaded.config.endpoints[0]
    assert isinstance(custom, CustomEndpointConfig)
    assert custom.served_models[0].model == "./fallback"


def test_a_doubled_dollar_escapes_interpolation() -> None:
    loaded = parse_config("endpoints:" + endpoint(model="'./a$${B}'"), environ={})
    custom = loaded.config.endpoints[0]
    assert isinstance(custom, CustomEndpointConfig)
    assert custom.served_models[0].model == "./a${B}"


def test_a_literal_key_is_rejected() -> None:
    text = "auth:\n  keys:\n    - {id: a, key: gw-literal-secret}\nendpoints:" + endpoint()
    (issue,) = issues_of(text)
    assert issue.startswith("auth.keys[0].key: must be an environment variable reference")
    assert "gw-literal-secret" not in issue


def test_a_key_from_the_environment_is_accepted() -> None:
    text = "auth:\n  keys:\n    - {id: a, key: '${K}'}\nendpoints:" + endpoint()
    assert parse_config(text, environ={"K": "gw-from-the-environment"}).config.auth is not None


def test_a_key_needs_exactly_one_of_sha256_or_key() -> None:
    text = f"auth:\n  keys:\n    - {{id: a}}\n    - {{id: b, sha256: '{SHA}', key: '${{K}}'}}\n"
    issues = issues_of(text, {"K": "v"})
    assert "auth.keys[0]: give exactly one of sha256 or key" in issues
    assert "auth.keys[1]: give exactly one of sha256 or key" in issues


def test_a_malformed_sha256_is_rejected() -> None:
    (issue,) = issues_of("auth:\n  keys:\n    - {id: a, sha256: abc}\n")
    assert issue.startswith("auth.keys[0].sha256: must be 64 hex characters")


def test_duplicate_key_ids_and_duplicate_keys_are_rejected() -> None:
    text = f"auth:\n  keys:\n    - {{id: a, sha256: '{SHA}'}}\n    - {{id: a, sha256: '{SHA}'}}\n"
    issues = issues_of(text)
    assert "auth.keys[1].id: duplicate key id 'a'" in issues
    assert "auth.keys[1]: the same key is already configured as auth.keys[0]" in issues


def test_unknown_roles_are_rejected() -> None:
    (issue,) = issues_of(f"auth:\n  keys:\n    - {{id: a, sha256: '{SHA}', roles: [root]}}\n")
    assert issue.startswith("auth.keys[0].roles[0]:")


def test_traffic_must_sum_to_100() -> None:
    text = """
endpoints:
  - name: clf
    type: custom
    served_models: [{model: ./a, traffic: 60}, {model: ./b, traffic: 30}]
"""
    assert issues_of(text) == ["endpoints[0].served_models: traffic must sum to 100, not 90"]


def test_traffic_out_of_range_is_rejected_by_path() -> None:
    text = "endpoints:" + endpoint().replace("traffic: 100", "traffic: 101")
    issues = issues_of(text)
    assert any(
        i.startswith("endpoints[0].served_models[0].traffic: Input should be less") for i in issues
    )


def test_endpoint_names_must_be_unique() -> None:
    issues = issues_of("endpoints:" + endpoint("a") + endpoint("b") + endpoint("a"))
    assert issues == ["endpoints[2].name: duplicate endpoint name 'a' (also endpoints[0])"]


def test_endpoint_names_must_be_url_safe() -> None:
    (issue,) = issues_of("endpoints:" + endpoint("'bad/name'"))
    assert issue.startswith("endpoints[0].name: must be 1-63 characters")


def test_only_one_endpoint_can_be_the_default() -> None:
    default = "\n    default: true"
    issues = issues_of("endpoints:" + endpoint("a", default) + endpoint("b", default))
    assert issues == [
        "endpoints[1].default: only one endpoint can be the default (endpoints[0] already is)"
    ]


def test_an_unknown_endpoint_type_is_rejected() -> None:
    (issue,) = issues_of("endpoints:" + endpoint().replace("type: custom", "type: magic"))
    assert issue.startswith("endpoints[0].type:")


def test_batching_bounds_are_checked() -> None:
    extra = "\n    batching: {max_batch_size: 0, max_wait_ms: -1}"
    issues = issues_of("endpoints:" + endpoint(extra=extra))
    assert any(i.startswith("endpoints[0].batching.max_batch_size:") for i in issues)
    assert any(i.startswith("endpoints[0].batching.max_wait_ms:") for i in issues)


def test_every_problem_is_reported_at_once() -> None:
    text = "colour: blue\nendpoints:" + endpoint("a") + endpoint("a")
    assert len(issues_of(text)) == 2


def test_an_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config_file(tmp_path / "missing.yaml")


def test_a_model_path_that_is_not_an_mlflow_model_is_named_by_path(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "endpoints:\n  - name: clf\n    type: custom\n    served_models:\n"
        "      - {model: ./empty, traffic: 50}\n      - {model: ./nowhere, traffic: 50}\n"
    )
    with pytest.raises(ConfigError) as caught:
        build_runtime(load_config_file(config))
    paths = [issue.path for issue in caught.value.issues]
    assert paths == ["endpoints[0].served_models[0].model", "endpoints[0].served_models[1].model"]
    assert "is not an MLflow model folder" in caught.value.issues[0].message


def test_a_registry_uri_that_does_not_resolve_is_named_by_path(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"registry_uri: sqlite:///{tmp_path}/empty.db\n"
        "endpoints:\n  - name: clf\n    type: custom\n    served_models:\n"
        "      - {model: 'models:/nothing@champion', traffic: 100}\n"
    )
    with pytest.raises(ConfigError) as caught:
        build_runtime(load_config_file(config))
    (issue,) = caught.value.issues
    assert issue.path == "endpoints[0].served_models[0].model"
    assert "cannot resolve 'models:/nothing@champion' in the registry" in issue.message


LLM = """
  - name: {name}
    type: foundation
    task: {task}
    deployments: [{{api_base: "http://127.0.0.1:9/v1", model: m}}]
    fallbacks: {fallbacks}"""


def test_an_llm_config_is_valid() -> None:
    text = (
        "endpoints:"
        + LLM.format(name="a", task="chat", fallbacks="[b]")
        + LLM.format(name="b", task="chat", fallbacks="[]")
    )
    loaded = parse_config(text, environ={})
    assert loaded.config.endpoints[0].fallbacks == ("b",)  # type: ignore[union-attr]


def test_fallbacks_must_name_llm_endpoints_of_the_same_task() -> None:
    text = (
        "endpoints:"
        + LLM.format(name="a", task="chat", fallbacks="[nope, a, e, clf]")
        + LLM.format(name="e", task="embeddings", fallbacks="[]")
        + endpoint("clf")
    )
    assert issues_of(text) == [
        "endpoints[0].fallbacks[0]: unknown endpoint 'nope'",
        "endpoints[0].fallbacks[1]: an endpoint cannot be its own fallback",
        "endpoints[0].fallbacks[2]: 'e' serves embeddings, not chat",
        "endpoints[0].fallbacks[3]: 'clf' is a custom endpoint; fallbacks must be LLM endpoints",
    ]


def test_deployments_need_an_http_api_base() -> None:
    text = "endpoints:" + LLM.format(name="a", task="chat", fallbacks="[]").replace(
        "http://127.0.0.1:9/v1", "ftp://x"
    )
    (issue,) = issues_of(text)
    assert issue.startswith(
        "endpoints[0].deployments[0].api_base: must be an http:// or https:// URL"
    )


def test_an_unknown_task_is_rejected_by_path() -> None:
    (issue,) = issues_of("endpoints:" + LLM.format(name="a", task="vision", fallbacks="[]"))
    assert issue.startswith("endpoints[0].task:")


def test_an_external_provider_without_a_default_base_needs_one(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "endpoints:\n  - {name: az, type: external, task: chat, provider: azure, model: gpt}\n"
    )
    with pytest.raises(ConfigError) as caught:
        build_runtime(load_config_file(config))
    assert [str(i) for i in caught.value.issues] == [
        "endpoints[0]: provider 'azure' needs an api_base"
    ]


def test_keys_may_only_name_configured_groups() -> None:
    text = f"groups: {{team-a: {{}}}}\nauth:\n  keys:\n    - {{id: a, sha256: '{SHA}', groups: [team-a, team-b]}}\n"
    assert issues_of(text) == ["auth.keys[0].groups[1]: unknown group 'team-b'"]
