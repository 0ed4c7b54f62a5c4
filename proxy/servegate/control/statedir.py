"""API-created endpoints on disk (``servegate serve --state-dir DIR``).

Each endpoint is one ServingEndpoint manifest, ``DIR/endpoints/<name>.yaml``, the same
document ``kubectl apply`` takes, and the gateway serves that folder beside the PATHs it
was given, so API-created endpoints survive a restart and can be read, diffed and copied
into a cluster. Their literal credentials are files in the secrets directory, under the
endpoint's own scope (``plaintext.py``), mode 0600: never in the manifest.

Writes are atomic (a temporary file, then ``os.replace``). A create publishes its manifest
with ``os.link``, which fails when the name exists, so of two workers creating the same
name exactly one wins, and the loser has written nothing: its credentials are written only
after the name is its own.

:class:`StateDir` is synchronous (local files); :class:`LocalStore` is the same thing as an
:class:`~servegate.control.store.EndpointStore`, off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml

from servegate.control.pending import served_digest
from servegate.control.plaintext import Extracted, scope_for
from servegate.control.store import AlreadyExists, Conflict, Stored, first_history, next_history
from servegate.ingress.errors import NotFound
from servegate.spec.manifest import API_VERSION, CREATED_MS, KIND


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

    def read(self, name: str) -> dict[str, Any] | None:
        """The stored spec (references only), or None when the API did not create it."""
        stored = self.stored(name)
        return stored.spec if stored is not None else None

    def stored(self, name: str) -> Stored | None:
        """The stored version: spec, change time and revision read from one open file,
        so they cannot belong to two different writes."""
        try:
            with self.path(name).open("rb") as handle:
                stat = os.fstat(handle.fileno())
                doc = yaml.safe_load(handle.read())
        except FileNotFoundError:
            return None
        spec = doc.get("spec") if isinstance(doc, dict) else None
        if not isinstance(spec, dict):
            return None
        annotations = (doc.get("metadata") or {}).get("annotations") or {}
        changed_ms = stat.st_mtime_ns // 1_000_000
        try:
            created_ms = int(annotations.get(CREATED_MS, changed_ms))
        except ValueError:
            created_ms = changed_ms
        return Stored(
            name=name,
            spec=spec,
            changed_ms=changed_ms,
            created_ms=created_ms,
            revision=_revision(stat),
            serves_as=served_digest(spec),
        )

    def create(self, name: str, extracted: Extracted, creator: str) -> None:
        """Store a new endpoint; FileExistsError if the name is taken (nothing written)."""
        history = first_history(creator)
        fd, temp = tempfile.mkstemp(dir=self.endpoints, prefix=f".{name}.yaml.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(_manifest(name, extracted.spec, history))
            os.chmod(temp, 0o644)
            os.link(temp, self.path(name))  # the commit point: fails if the name is taken
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
        try:
            self._write_secrets(extracted)
        except BaseException:
            self.path(name).unlink(missing_ok=True)  # no endpoint without its credentials
            raise

    def replace(self, name: str, extracted: Extracted, revision: str | None = None) -> None:
        """Store a new version: ``config_version`` + 1 when the spec changed.

        With ``revision``, FileNotFoundError if the manifest is gone and ``Conflict`` if it
        was rewritten since that revision was read (another worker's write).
        """
        with self.path(name).open("rb") as handle:
            stat = os.fstat(handle.fileno())
            doc = yaml.safe_load(handle.read())
        if revision is not None and _revision(stat) != revision:
            raise Conflict(f"Endpoint '{name}' was changed meanwhile; read it and try again.")
        self._write_secrets(extracted)
        history = next_history(
            doc.get("metadata", {}).get("annotations") or {},
            changed=doc.get("spec") != extracted.spec,
        )
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


class LocalStore:
    """:class:`StateDir` as an ``EndpointStore``: each call runs in a worker thread, so a
    slow disk never blocks the event loop. The gateway serves the state dir itself, so it
    reloads after every write and answers with the endpoint already serving."""

    reload_after_write = True
    authoritative = False
    """The gateway's own PATHs define endpoints too; the API may not change those."""

    def __init__(self, state: StateDir) -> None:
        self.state = state

    async def manages(self, name: str) -> bool:
        return await asyncio.to_thread(self.state.manages, name)

    async def read(self, name: str) -> Stored | None:
        return await asyncio.to_thread(self.state.stored, name)

    async def create(self, name: str, extracted: Extracted, creator: str) -> Stored:
        try:
            await asyncio.to_thread(self.state.create, name, extracted, creator)
        except FileExistsError:
            raise AlreadyExists(f"Endpoint with name '{name}' already exists.") from None
        return await self._written(name)

    async def replace(self, current: Stored, extracted: Extracted) -> Stored:
        try:
            await asyncio.to_thread(self.state.replace, current.name, extracted, current.revision)
        except FileNotFoundError:
            raise NotFound(f"Endpoint with name '{current.name}' not found.") from None
        return await self._written(current.name)

    async def _written(self, name: str) -> Stored:
        stored = await self.read(name)
        if stored is None:  # deleted by another worker right after this write
            raise NotFound(f"Endpoint with name '{name}' not found.")
        return stored

    async def delete(self, name: str) -> None:
        if not await self.manages(name):
            raise NotFound(f"Endpoint with name '{name}' not found.")
        await asyncio.to_thread(self.state.delete, name)


def _revision(stat: os.stat_result) -> str:
    """A manifest's identity: every write makes a new file (``os.replace``), so a new inode."""
    return f"{stat.st_ino}-{stat.st_mtime_ns}-{stat.st_size}"


def _manifest(name: str, spec: dict[str, Any], history: dict[str, str]) -> str:
    doc = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name, "annotations": history},
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
