"""The `gateway` command line, run as a real subprocess."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from pathlib import Path

from tests.gateway_process import free_port, write_config
from tests.models import TestModels


def gateway_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], capture_output=True, text=True, timeout=timeout
    )


def test_keys_new_prints_a_fresh_key_and_its_sha256() -> None:
    first, second = (
        gateway_cli("keys", "new", "--id", "analytics"),
        gateway_cli("keys", "new", "--id", "x"),
    )
    assert first.returncode == 0
    key = re.search(r"^\s+(gw-\S+)$", first.stdout, re.MULTILINE)
    assert key is not None
    assert len(key.group(1)) >= 3 + 43  # prefix + 32 bytes, base64url
    digest = re.search(r'sha256: "([0-9a-f]{64})"', first.stdout)
    assert (
        digest is not None and digest.group(1) == hashlib.sha256(key.group(1).encode()).hexdigest()
    )
    assert "- id: analytics" in first.stdout
    assert key.group(1) not in second.stdout


def test_check_accepts_a_valid_config_and_loads_its_models(
    models: TestModels, tmp_path: Path
) -> None:
    config = write_config(
        tmp_path,
        f"endpoints:\n  - {{name: iris, type: custom, served_models: [{{model: '{models.classifier}'}}]}}\n",
    )
    result = gateway_cli("check", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "ok  iris: " in result.stdout


def test_check_lists_every_problem_by_path(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        """
colour: blue
endpoints:
  - {name: a, type: custom, served_models: [{model: ./x, traffic: 50}]}
  - {name: a, type: custom, served_models: [{model: ./y}]}
""",
    )
    result = gateway_cli("check", "--config", str(config))
    assert result.returncode == 1
    assert "colour: unknown key" in result.stderr
    assert "endpoints[0].served_models: traffic must sum to 100, not 50" in result.stderr
    assert "endpoints[1].name: duplicate endpoint name 'a'" in result.stderr


def test_check_reports_models_that_cannot_load(tmp_path: Path) -> None:
    config = write_config(
        tmp_path, "endpoints:\n  - {name: a, type: custom, served_models: [{model: ./missing}]}\n"
    )
    result = gateway_cli("check", "--config", str(config))
    assert result.returncode == 1
    assert (
        "endpoints[0].served_models[0].model: './missing' is not an MLflow model folder"
        in result.stderr
    )


def test_serve_refuses_an_invalid_config_before_binding(tmp_path: Path) -> None:
    config = write_config(tmp_path, "endpoints: [{name: a}]\n")
    result = gateway_cli("serve", "--config", str(config), "--port", str(free_port()))
    assert result.returncode == 1
    assert "endpoints[0].type" in result.stderr


def test_serve_exits_when_a_model_cannot_load(tmp_path: Path) -> None:
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "MLmodel").write_text("flavors: {}\n")
    config = write_config(
        tmp_path, "endpoints:\n  - {name: a, type: custom, served_models: [{model: ./broken}]}\n"
    )
    result = gateway_cli("serve", "--config", str(config), "--port", str(free_port()))
    assert result.returncode == 1
    assert "endpoints[0].served_models[0].model: cannot load './broken'" in result.stderr


def test_several_workers_with_per_process_limits_are_refused(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        "auth: {keys: [{id: a, sha256: '" + "0" * 64 + "', limits: {requests_per_minute: 4}}]}\n",
    )
    result = gateway_cli(
        "serve", "--config", str(config), "--workers", "2", "--port", str(free_port()), timeout=60
    )
    assert result.returncode == 1
    assert "limits.store" in result.stderr and "one worker" in result.stderr
