"""pyproject.toml declares exactly what the code imports.

`pip install .` resolves from `[project].dependencies` alone (no lock file), so a package the code
imports but pyproject does not name works in `make setup`'s venv (the lock has it) and breaks in
a plain install; a declared package nothing uses is dead weight. Imports are read with `ast`
(lazy ones inside functions included) and mapped to distributions with the dev venv's
`importlib.metadata.packages_distributions()`. `tests/test_install.py` proves the install works.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from collections.abc import Iterable
from functools import cache
from importlib.metadata import packages_distributions
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FIRST_PARTY = {"gateway", "tests"}

# Declared, used, and never imported by name: each says where the code relies on it.
USED_WITHOUT_IMPORT = {
    "uvloop": "gateway/cli.py runs uvicorn with loop='uvloop'",
    "hiredis": "redis-py parses replies with it when it is installed (limits, reload broadcast)",
}


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_names(requirements: Iterable[str]) -> set[str]:
    names = set()
    for requirement in requirements:
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
        assert match, f"unreadable requirement {requirement!r}"
        names.add(normalize(match.group(1)))
    return names


@cache
def project() -> dict[str, object]:
    with open(REPO / "pyproject.toml", "rb") as file:
        table = tomllib.load(file)["project"]
    assert isinstance(table, dict)
    return table


def declared() -> set[str]:
    dependencies = project()["dependencies"]
    assert isinstance(dependencies, list)
    return requirement_names(dependencies)


def declared_dev() -> set[str]:
    extras = project()["optional-dependencies"]
    assert isinstance(extras, dict)
    return requirement_names(extras["dev"])


def imported_modules(root: Path) -> dict[str, set[str]]:
    """Top-level third-party modules imported anywhere under `root` -> the files importing them."""
    found: dict[str, set[str]] = {}
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.partition(".")[0]
                if top not in sys.stdlib_module_names and top not in FIRST_PARTY:
                    found.setdefault(top, set()).add(str(path.relative_to(REPO)))
    return found


def imported_distributions(root: Path) -> dict[str, tuple[set[str], set[str]]]:
    """Per module imported under `root`: (the distributions installing it, the files importing it).

    A module may come from several distributions (`mlflow`: mlflow, mlflow-skinny,
    mlflow-tracing); declaring any one of them covers it.
    """
    providers = packages_distributions()
    found = {}
    unknown = []
    for module, files in imported_modules(root).items():
        if module not in providers:
            unknown.append(f"{module} (imported by {', '.join(sorted(files))})")
            continue
        found[module] = ({normalize(name) for name in providers[module]}, files)
    assert not unknown, f"imported, but installed by no distribution here: {unknown}"
    return found


def undeclared(root: Path, available: set[str]) -> dict[str, list[str]]:
    return {
        module: sorted(files)
        for module, (distributions, files) in imported_distributions(root).items()
        if not distributions & available
    }


def used_distributions(root: Path) -> set[str]:
    return {name for names, _ in imported_distributions(root).values() for name in names}


def test_the_dependencies_are_exactly_what_gateway_imports() -> None:
    missing = undeclared(REPO / "gateway", declared())
    assert not missing, f"imported by gateway/ but not in [project].dependencies: {missing}"
    unused = declared() - used_distributions(REPO / "gateway") - USED_WITHOUT_IMPORT.keys()
    assert not unused, f"in [project].dependencies but imported nowhere in gateway/: {unused}"


def test_the_exceptions_are_still_needed() -> None:
    used = used_distributions(REPO / "gateway")
    for name, why in USED_WITHOUT_IMPORT.items():
        assert name in declared(), f"{name} ({why}) is not declared"
        assert name not in used, f"{name} is imported now: drop it from USED_WITHOUT_IMPORT"


def test_the_dev_extra_covers_what_the_tests_import() -> None:
    missing = undeclared(REPO / "tests", declared() | declared_dev())
    assert not missing, (
        f"imported by tests/ but in neither dependencies nor the dev extra: {missing}"
    )


def test_the_lock_pins_every_declared_dependency() -> None:
    """The README installs from requirements.lock: it must hold everything pyproject names."""
    locked = {
        normalize(match.group(1))
        for match in re.finditer(
            r"^([A-Za-z0-9][A-Za-z0-9._-]*)==", (REPO / "requirements.lock").read_text(), re.M
        )
    }
    assert not (declared() | declared_dev()) - locked, (
        "run `make lock` after editing requirements.in"
    )
