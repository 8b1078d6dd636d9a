"""Where a configured MLflow model really is: a local folder or one version of a registered model.

`models:/name@alias` and `models:/name/latest` are resolved to a version number once per config
version; `registry_moved` tells when they would now resolve to another one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from gateway.config.schema import CustomEndpointConfig, EndpointConfig

REGISTRY_SCHEME = "models:/"


@dataclass(frozen=True, slots=True)
class ResolvedModel:
    """Where a configured model really is: a local path or a pinned registry version."""

    load_uri: str
    # What `x-served-model` and the ledger say: `models:/name/3` for a registry model (never
    # its alias), else the configured path.
    label: str
    version: str = ""  # the registry version, "" for a local model
    run_id: str = ""  # the run the registry version came from, if it names one

    @property
    def identity(self) -> str:
        """What makes two models the same model: its registry version (two versions may share
        one source, and so one download URI), else its folder."""
        return self.label if self.version else self.load_uri


def resolve_model(spec: str, *, base_dir: Path, registry_uri: str | None) -> ResolvedModel:
    """Resolve `models:/name/3`, `models:/name@alias`, `models:/name/latest` or a local folder.

    Raises ValueError with a message fit for the config's YAML path, which quotes nothing the
    registry answered (its error code only).
    """
    if not spec.startswith(REGISTRY_SCHEME):
        path = Path(spec).expanduser()
        path = path if path.is_absolute() else base_dir / path
        if not (path / "MLmodel").is_file():
            raise ValueError(f"{spec!r} is not an MLflow model folder (no MLmodel file in {path})")
        return ResolvedModel(load_uri=str(path), label=spec)

    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    reference = spec[len(REGISTRY_SCHEME) :]
    client = MlflowClient(registry_uri=registry_uri, tracking_uri=registry_uri)
    try:
        if "@" in reference:
            name, alias = reference.split("@", 1)
            found = client.get_model_version_by_alias(name, alias)
        else:
            name, _, selector = reference.rpartition("/")
            if not name or not selector:
                raise ValueError(
                    f"{spec!r} is not a registry URI: use models:/NAME/VERSION,"
                    " models:/NAME@ALIAS or models:/NAME/latest"
                )
            if selector == "latest":
                versions = client.search_model_versions(f"name = '{name}'")
                if not versions:
                    raise ValueError(f"registered model {name!r} has no versions")
                found = max(versions, key=lambda v: int(v.version))
            else:
                found = client.get_model_version(name, selector)
        version = str(found.version)
        return ResolvedModel(
            load_uri=client.get_model_version_download_uri(name, version),
            label=f"{REGISTRY_SCHEME}{name}/{version}",
            version=version,
            run_id=found.run_id or "",
        )
    except ValueError:
        raise
    except MlflowException as exc:
        # Never the message: it may quote the registry's response (or a proxy's error page).
        raise ValueError(f"cannot resolve {spec!r} in the registry ({exc.error_code})") from exc
    except Exception as exc:  # unreachable, refused, timed out: its message names the URL
        raise ValueError(
            f"cannot resolve {spec!r}: the registry did not answer ({type(exc).__name__})"
        ) from exc


def registry_moved(
    endpoints: Iterable[EndpointConfig],
    serving: set[str],
    *,
    base_dir: Path,
    registry_uri: str | None,
) -> list[str]:
    """Registry models (`@alias`, `/latest`) that now resolve to a version not in `serving`
    (identities: `models:/name/3`), blocking: it asks the registry."""
    moved = []
    for endpoint in endpoints:
        if not isinstance(endpoint, CustomEndpointConfig):
            continue
        for spec in endpoint.served_models:
            pinned = spec.model.rsplit("/", 1)[-1].isdigit()
            if not spec.model.startswith(REGISTRY_SCHEME) or pinned:
                continue
            resolved = resolve_model(spec.model, base_dir=base_dir, registry_uri=registry_uri)
            if resolved.identity not in serving:
                moved.append(f"{spec.model} → {resolved.label}")
    return moved
