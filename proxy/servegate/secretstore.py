"""Resolve ``{{secrets/<scope>/<key>}}`` to the file ``<secrets-dir>/<scope>/<key>``.

That is the layout of a mounted Kubernetes Secret volume (one directory per Secret, one file
per key), so local mode and cluster mode share one mechanism: locally you create the files,
in a cluster the operator mounts the Secrets there. One trailing newline is stripped, since
``echo key > file`` adds one.
"""

from __future__ import annotations

from pathlib import Path

from servegate.spec.secrets import SecretRef


class MissingSecret(LookupError):
    def __init__(self, ref: SecretRef) -> None:
        super().__init__(
            f"secret scope '{ref.scope}' key '{ref.key}' (referenced as {ref}) was not found"
        )
        self.ref = ref


class SecretStore:
    def __init__(self, root: Path | None) -> None:
        self.root = root

    def read(self, ref: SecretRef) -> str:
        if self.root is None:
            raise MissingSecret(ref)
        path = self.root / ref.scope / ref.key
        try:
            value = path.read_text(encoding="utf-8")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise MissingSecret(ref) from None
        if value.endswith("\r\n"):
            return value[:-2]
        return value[:-1] if value.endswith("\n") else value
