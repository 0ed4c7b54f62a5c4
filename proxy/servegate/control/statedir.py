"""API-created endpoints on disk (``servegate serve --state-dir DIR``).

Each endpoint is one ServingEndpoint manifest, ``DIR/endpoints/<name>.yaml``, the same
document ``kubectl apply`` takes, and the gateway serves that folder beside the PATHs it
was given, so API-created endpoints survive a restart and can be read, diffed and copied
into a cluster. Their literal credentials are files in the secrets directory, under the
endpoint's own scope (``plaintext.py``), mode 0600: never in the manifest.

Writes are atomic (a temporary file, then ``os.replace``), and a create uses ``O_EXCL``,
so two gateway workers creating the same name cannot both win.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from servegate.control.plaintext import Extracted, scope_for
from servegate.spec.manifest import API_VERSION, KIND

MANAGED_BY = "servegate.io/managed-by"
CREATED_BY = "servegate.io/created-by"
CONFIG_VERSION = "servegate.io/config-version"
CREATED_MS = "servegate.io/creation-timestamp"
UPDATED_MS = "servegate.io/last-updated-timestamp"
"""The endpoint's history, kept in its manifest so that every worker, and the gateway
after a restart, reports the same ``config_version`` and timestamps (config.py reads
them)."""


class StateDir:
    def __init__(self, root: Path, secrets_dir: Path) -> None:
        self.root = root
        self.endpoints = root / "endpoints"
        self.secrets_dir = secrets_dir
        self.endpoints.mkdir(parents=True, exist_ok=True)
        self.secrets_dir.mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> Path:
        return self.endpoints / f"{name}.yaml"

    def manages(self, name: str) -> bool:
        return self.path(name).is_file()

    def changed_ms(self, name: str) -> int:
        """When the endpoint's manifest was last written (epoch ms; 0 if gone)."""
        try:
            return int(self.path(name).stat().st_mtime * 1000)
        except FileNotFoundError:
            return 0

    def read(self, name: str) -> dict[str, Any] | None:
        """The stored spec (references only), or None when the API did not create it."""
        try:
            doc = yaml.safe_load(self.path(name).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        spec = doc.get("spec") if isinstance(doc, dict) else None
        return spec if isinstance(spec, dict) else None

    def create(self, name: str, extracted: Extracted, creator: str) -> None:
        """Store a new endpoint; FileExistsError if the name is taken."""
        self._write_secrets(extracted)
        now = str(int(time.time() * 1000))
        history = {CREATED_BY: creator, CONFIG_VERSION: "1", CREATED_MS: now, UPDATED_MS: now}
        text = _manifest(name, extracted.spec, history)
        fd = os.open(self.path(name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)

    def replace(self, name: str, extracted: Extracted) -> None:
        """Store a new version: ``config_version`` + 1 when the spec changed."""
        self._write_secrets(extracted)
        doc = yaml.safe_load(self.path(name).read_text(encoding="utf-8"))
        history = dict(doc.get("metadata", {}).get("annotations") or {})
        history.pop(MANAGED_BY, None)
        if doc.get("spec") != extracted.spec:
            version = int(history.get(CONFIG_VERSION, "1"))
            history[CONFIG_VERSION] = str(version + 1)
            history[UPDATED_MS] = str(int(time.time() * 1000))
        _atomic_write(self.path(name), _manifest(name, extracted.spec, history))
        self._prune(extracted)

    def delete(self, name: str) -> None:
        self.path(name).unlink(missing_ok=True)
        shutil.rmtree(self.secrets_dir / scope_for(name), ignore_errors=True)

    def _write_secrets(self, extracted: Extracted) -> None:
        if not extracted.secrets:
            return
        scope = self.secrets_dir / extracted.scope
        scope.mkdir(mode=0o700, exist_ok=True)
        for key, value in extracted.secrets.items():
            _atomic_write(scope / key, value, mode=0o600)

    def _prune(self, extracted: Extracted) -> None:
        """Drop the scope's keys the new spec no longer refers to."""
        scope = self.secrets_dir / extracted.scope
        if not scope.is_dir():
            return
        keep = extracted.referenced_keys()
        for path in scope.iterdir():
            if path.name not in keep and path.is_file():
                path.unlink(missing_ok=True)


def _manifest(name: str, spec: dict[str, Any], history: dict[str, str]) -> str:
    doc = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name, "annotations": {MANAGED_BY: "api", **history}},
        "spec": spec,
    }
    return yaml.safe_dump(doc, sort_keys=False)


def _atomic_write(path: Path, text: str, mode: int = 0o644) -> None:
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(temp, mode)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
