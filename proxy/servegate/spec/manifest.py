"""ServingEndpoint manifests: the Kubernetes-style documents the gateway and CLI load.

`load_manifests` never raises for bad input: every problem becomes a `ManifestError`
naming the document (`file#index`), the endpoint, and the field path from the document
root, so one broken endpoint never hides the others. The same pydantic-error conversion,
`validation_errors`, serves the REST API, which reports paths relative to its body.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, NamedTuple

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from servegate.spec.endpoint import ServingEndpointSpec
from servegate.spec.providers import SpecError, SpecModel

API_GROUP = "servegate.io"
API_VERSION = f"{API_GROUP}/v1alpha1"
KIND = "ServingEndpoint"

# The annotations an endpoint created through the REST API carries: who made it, and its
# history, so every worker (and the gateway after a restart) reports the same
# ``config_version`` and timestamps. Written by control/, read by config.py.
MANAGED_BY = f"{API_GROUP}/managed-by"
CREATED_BY = f"{API_GROUP}/created-by"
CONFIG_VERSION = f"{API_GROUP}/config-version"
CREATED_MS = f"{API_GROUP}/creation-timestamp"
UPDATED_MS = f"{API_GROUP}/last-updated-timestamp"
MANIFEST_SUFFIXES = frozenset({".yaml", ".yml", ".json"})
ENDPOINT_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,63}")

# libyaml's loader is several times faster; fall back to the pure-Python one without it.
_YamlLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def check_endpoint_name(name: str) -> str:
    """Return `name` if it is a valid endpoint name (the platform's rule), else raise."""
    if not ENDPOINT_NAME_RE.fullmatch(name):
        raise ValueError("endpoint name must be 1 to 63 characters: letters, digits, '-' and '_'")
    return name


class ObjectMeta(SpecModel):
    """Kubernetes object metadata; servegate reads `name` and keeps the rest for display."""

    name: str = Field(description="Endpoint name: 1 to 63 letters, digits, '-' or '_'.")
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None
    creationTimestamp: datetime | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None
    resourceVersion: str | None = None

    _check_name = field_validator("name")(check_endpoint_name)


class ServingEndpointManifest(SpecModel):
    """One `ServingEndpoint` document. Unknown top-level keys (`status`) are dropped:
    status is written by the operator, never read back as configuration."""

    model_config = ConfigDict(extra="ignore", hide_input_in_errors=True)

    apiVersion: Literal["servegate.io/v1alpha1"]
    kind: Literal["ServingEndpoint"]
    metadata: ObjectMeta
    spec: ServingEndpointSpec


def parse_spec(data: Mapping[str, Any]) -> ServingEndpointSpec:
    """Validate a Databricks create-endpoint body (or a manifest's `spec`).

    A top-level `name` (the create body's endpoint name) is dropped: the name lives
    outside the spec, in the URL or `metadata.name`. Raises `pydantic.ValidationError`;
    turn it into messages with `validation_errors`.
    """
    return ServingEndpointSpec.model_validate({k: v for k, v in data.items() if k != "name"})


class FieldIssue(NamedTuple):
    """One validation problem: a dotted field path (`a.b[0].c`) and a human message."""

    field: str
    message: str


def format_loc(loc: Sequence[str | int]) -> str:
    """Render a pydantic location as `config.served_entities[0].name`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


_PYDANTIC_PREFIXES = ("Value error, ", "Assertion failed, ")


def validation_errors(exc: ValidationError, prefix: str = "") -> list[FieldIssue]:
    """Turn a pydantic error into (field, message) pairs, deepest field first-class.

    `SpecError`s raised by cross-field validators carry the rest of their path, which is
    appended here. `prefix` is prepended to every path (`spec` for a manifest's spec).
    Inputs are never included: they may hold plaintext credentials.
    """
    issues: list[FieldIssue] = []
    for error in exc.errors(include_url=False, include_input=False):
        loc: tuple[str | int, ...] = tuple(error["loc"])
        cause = error.get("ctx", {}).get("error")
        if isinstance(cause, SpecError):
            loc += cause.loc
            message = str(cause)
        elif error["type"] == "model_type":
            message = "expected a mapping"
        else:
            message = error["msg"]
            for pydantic_prefix in _PYDANTIC_PREFIXES:
                message = message.removeprefix(pydantic_prefix)
        path = format_loc(loc)
        if prefix:
            path = prefix if not path else f"{prefix}{'' if path.startswith('[') else '.'}{path}"
        issues.append(FieldIssue(path, message))
    return issues


@dataclass(frozen=True)
class ManifestError:
    """A problem with one document (or file); `str()` is a single readable line."""

    source: str
    name: str | None
    field: str
    message: str

    def __str__(self) -> str:
        endpoint = f" (endpoint {self.name!r})" if self.name else ""
        where = f"{self.field}: " if self.field else ""
        return f"{self.source}{endpoint}: {where}{self.message}"


@dataclass(frozen=True)
class LoadedEndpoint:
    """A valid endpoint; `source` is `file#index` of its document (`examples/chat.yaml#0`)."""

    name: str
    manifest: ServingEndpointManifest
    source: str


@dataclass
class LoadResult:
    """Everything that loaded, and everything that did not."""

    endpoints: list[LoadedEndpoint] = field(default_factory=list)
    errors: list[ManifestError] = field(default_factory=list)
    warnings: list[ManifestError] = field(default_factory=list)
    """Fields servegate does not know: kept (the platform tolerates them), but reported,
    since a misplaced field (``ai_gateway`` under ``config``) would otherwise do nothing."""


def unknown_fields(model: BaseModel, path: str) -> list[str]:
    """Dotted paths of every field a model tree accepted without knowing it."""
    found = [f"{path}.{name}" for name in (model.model_extra or {})]
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            found += unknown_fields(value, f"{path}.{name}")
        elif isinstance(value, list):
            for index, item in enumerate(value):
                if isinstance(item, BaseModel):
                    found += unknown_fields(item, f"{path}.{name}[{index}]")
    return found


def _manifest_files(path: Path) -> Iterator[Path]:
    """The files `path` names: itself, or a directory's manifest files sorted by name.

    Hidden entries are skipped, which is what makes a mounted ConfigMap work: its real
    files live in `..<timestamp>/`, reached through `..data`, and the visible top-level
    names are symlinks into it, so each file is seen exactly once (via its symlink).
    """
    if not path.is_dir():
        yield path
        return
    for child in sorted(path.iterdir(), key=lambda p: p.name):
        if (
            not child.name.startswith(".")
            and child.suffix.lower() in MANIFEST_SUFFIXES
            and child.is_file()
        ):
            yield child


def _parse_documents(path: Path, text: str) -> list[object]:
    """All documents of a file; raises ValueError with a line number on a syntax error."""
    if path.suffix.lower() == ".json":
        try:
            return [json.loads(text)]
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
            ) from exc
    try:
        return list(yaml.load_all(text, Loader=_YamlLoader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ValueError(f"invalid YAML{where}: {problem}") from exc


def _is_serving_endpoint(doc: Mapping[Any, Any]) -> bool:
    api_version = doc.get("apiVersion")
    group = api_version.split("/")[0] if isinstance(api_version, str) else None
    return group == API_GROUP and doc.get("kind") == KIND


def _document_name(doc: Mapping[Any, Any]) -> str | None:
    metadata = doc.get("metadata")
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    return name if isinstance(name, str) else None


def load_manifests(paths: Sequence[Path]) -> LoadResult:
    """Load every ServingEndpoint document under `paths` (files or directories).

    Directories are read non-recursively; files are taken in the order given, a
    directory's files by name. Documents of other kinds are skipped (a file may also
    hold Secrets), empty documents too. A file with a syntax error contributes nothing:
    a half-parsed file must not look like a complete configuration. When two documents
    define the same endpoint the later one is reported and the first one kept.
    """
    result = LoadResult()
    seen_files: set[Path] = set()
    defined_in: dict[str, str] = {}
    for given in paths:
        for path in _manifest_files(given):
            resolved = path.resolve()
            if resolved in seen_files:
                continue
            seen_files.add(resolved)
            _load_file(path, result, defined_in)
    return result


def _load_file(path: Path, result: LoadResult, defined_in: dict[str, str]) -> None:
    try:
        documents = _parse_documents(path, path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        result.errors.append(ManifestError(str(path), None, "", "no such file or directory"))
        return
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        result.errors.append(ManifestError(str(path), None, "", str(exc)))
        return
    for index, doc in enumerate(documents):
        source = f"{path}#{index}"
        if doc is None:
            continue
        if not isinstance(doc, Mapping):
            message = f"document is not a mapping (got {type(doc).__name__})"
            result.errors.append(ManifestError(source, None, "", message))
            continue
        if not _is_serving_endpoint(doc):
            continue
        name = _document_name(doc)
        try:
            manifest = ServingEndpointManifest.model_validate(doc)
        except ValidationError as exc:
            result.errors.extend(
                ManifestError(source, name, issue.field, issue.message)
                for issue in validation_errors(exc)
            )
            continue
        name = manifest.metadata.name
        if name in defined_in:
            message = f"duplicate endpoint name {name!r}; already defined in {defined_in[name]}"
            result.errors.append(ManifestError(source, name, "metadata.name", message))
            continue
        defined_in[name] = source
        result.endpoints.append(LoadedEndpoint(name, manifest, source))
        result.warnings.extend(
            ManifestError(source, name, path, "unknown field: kept, but servegate does not use it")
            for path in unknown_fields(manifest.spec, "spec")
        )
