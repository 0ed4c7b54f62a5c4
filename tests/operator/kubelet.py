"""A test stand-in for the kubelet: run a Deployment's container locally, volumes and all.

It materialises each volume the way kubelet's AtomicWriter does (files in ``..<timestamp>/``,
``..data`` pointing at it, top-level entries as ``name -> ..data/name``), honours projected
``items`` (key → path) and ``optional``, resolves ``env`` values (literal, or a
``secretKeyRef``/``configMapKeyRef`` read once, at start, as kubelet does) and ``$(VAR)``
references, rewrites the container's mount paths (in its arguments and its literal ``env``
values) to the local directories, and starts the container's
own ``command`` + ``args`` with ``servegate`` mapped to this interpreter. ``update`` swaps
``..data`` atomically, as a ConfigMap or Secret update would.
"""

from __future__ import annotations

import base64
import itertools
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.conftest import free_port

_counter = itertools.count()

Objects = Mapping[tuple[str, str], dict[str, Any]]
"""(kind, name) → object, for the ConfigMaps and Secrets the pod references."""


def _source_files(source: dict[str, Any], objects: Objects) -> dict[str, bytes]:
    if "configMap" in source or "secret" in source:
        kind = "ConfigMap" if "configMap" in source else "Secret"
        ref = source.get("configMap") or source.get("secret") or {}
        name = ref.get("name") or ref.get("secretName")
        obj = objects.get((kind, name))
        if obj is None:
            if ref.get("optional"):
                return {}
            raise FileNotFoundError(
                f"{kind} {name} is not optional and does not exist: the pod would not start"
            )
        data = _data(obj)
        items = ref.get("items")
        if items is None:
            return data
        files = {}
        for item in items:
            if item["key"] in data:
                files[item["path"]] = data[item["key"]]
            elif not ref.get("optional"):
                raise FileNotFoundError(f"{kind} {name} has no key {item['key']}")
        return files
    raise ValueError(f"unsupported volume source: {sorted(source)}")


def _data(obj: dict[str, Any]) -> dict[str, bytes]:
    out = {k: v.encode() for k, v in (obj.get("stringData") or {}).items()}
    if obj["kind"] == "Secret":
        out |= {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
    else:
        out |= {k: v.encode() for k, v in (obj.get("data") or {}).items()}
    return out


def volume_files(volume: dict[str, Any], objects: Objects) -> dict[str, bytes] | None:
    """The files of one volume; None for volumes that are plain directories (emptyDir)."""
    if "emptyDir" in volume:
        return None
    if "projected" in volume:
        files: dict[str, bytes] = {}
        for source in volume["projected"]["sources"]:
            files |= _source_files(source, objects)
        return files
    if "configMap" in volume or "secret" in volume:
        return _source_files(volume, objects)
    raise ValueError(f"unsupported volume: {volume['name']}")


def write_atomic(directory: Path, files: dict[str, bytes]) -> None:
    """kubelet's AtomicWriter: a new timestamped dir, then an atomic ``..data`` swap."""
    directory.mkdir(parents=True, exist_ok=True)
    payload = directory / f"..2026_11_22_{next(_counter):06d}"
    for rel, content in files.items():
        target = payload / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    tmp_link = directory / "..data_tmp"
    tmp_link.symlink_to(payload.name)
    os.replace(tmp_link, directory / "..data")
    for top in {rel.split("/", 1)[0] for rel in files}:
        link = directory / top
        if not link.is_symlink():
            link.symlink_to(f"..data/{top}")
    for old in directory.glob("..2026_*"):
        if old != payload:
            _remove_tree(old)


def _remove_tree(path: Path) -> None:
    for child in sorted(path.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        child.unlink() if child.is_file() or child.is_symlink() else child.rmdir()
    path.rmdir()


def _env_from(name: str, source: dict[str, Any], objects: Objects) -> str | None:
    """A ``secretKeyRef`` or ``configMapKeyRef``: None when optional and missing; a
    required one missing keeps the container from starting (CreateContainerConfigError)."""
    (kind_ref,) = source
    kinds = {"secretKeyRef": "Secret", "configMapKeyRef": "ConfigMap"}
    if kind_ref not in kinds:
        raise ValueError(f"env {name}: unsupported valueFrom {kind_ref}")
    ref = source[kind_ref]
    obj = objects.get((kinds[kind_ref], ref["name"]))
    data = _data(obj) if obj is not None else {}
    if ref["key"] in data:
        return data[ref["key"]].decode()
    if ref.get("optional"):
        return None
    raise FileNotFoundError(
        f"env {name}: {kinds[kind_ref]} {ref['name']} key {ref['key']} is not optional "
        "and does not exist: the container would not start"
    )


class Pod:
    """The container of ``deployment`` running locally under ``root``, as the pod ``name``
    (for ``fieldRef`` env values: ``metadata.name``, ``metadata.namespace``,
    ``spec.serviceAccountName``)."""

    def __init__(
        self,
        deployment: dict[str, Any],
        objects: Objects,
        root: Path,
        *,
        name: str | None = None,
    ) -> None:
        self.root = root
        meta = deployment["metadata"]
        self.name = name or f"{meta['name']}-7d9f5c6b8-x2x4q"
        pod = deployment["spec"]["template"]["spec"]
        self.fields = {
            "metadata.name": self.name,
            "metadata.namespace": meta.get("namespace") or "default",
            "spec.serviceAccountName": pod.get("serviceAccountName") or "default",
        }
        self.ports: dict[int, int] = {}
        """Container port → the free local port it is served on (URL arguments only)."""
        self.volumes = {v["name"]: v for v in pod["volumes"]}
        (container,) = pod["containers"]
        self.container = container
        self.mounts: dict[str, Path] = {}
        for mount in container.get("volumeMounts", []):
            local = root / mount["name"]
            self.mounts[mount["mountPath"]] = local
            files = volume_files(self.volumes[mount["name"]], objects)
            if files is None:
                local.mkdir(parents=True, exist_ok=True)
            else:
                write_atomic(local, files)
        self.args = self._args()
        self.env = self._env(objects)

    def update(self, objects: Objects) -> None:
        """ConfigMaps/Secrets changed: kubelet rewrites every projected volume atomically."""
        for mount in self.container.get("volumeMounts", []):
            files = volume_files(self.volumes[mount["name"]], objects)
            if files is not None:
                write_atomic(self.mounts[mount["mountPath"]], files)

    def _rebase(self, text: str) -> str:
        """Rewrite mount paths in one pass (a rebased path may itself contain ``/tmp``)."""
        if not self.mounts:
            return text
        alternatives = "|".join(re.escape(m) for m in sorted(self.mounts, key=len, reverse=True))
        pattern = re.compile(f"(?:{alternatives})(?=/|$)")
        return pattern.sub(lambda m: str(self.mounts[m.group(0)]), text)

    def _env(self, objects: Objects) -> dict[str, str]:
        env: dict[str, str] = {}
        for var in self.container.get("env", []):
            if "fieldRef" in var.get("valueFrom", {}):
                env[var["name"]] = self.fields[var["valueFrom"]["fieldRef"]["fieldPath"]]
                continue
            if "valueFrom" in var:
                value = _env_from(var["name"], var["valueFrom"], objects)
                if value is not None:
                    env[var["name"]] = value
                continue
            env[var["name"]] = self._rebase(
                re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), var["value"])
            )
        env["HOME"] = str(self.root)
        return {**os.environ, **env}

    def _args(self) -> list[str]:
        """The container's arguments after ``servegate``, rebased onto the local mounts.

        The pod binds 0.0.0.0 in its own network namespace; here it binds loopback on a
        free port instead: ``--host``/``--port`` (the gateway; port 0, read back from its
        log) and ``http://0.0.0.0:<port>`` in an argument (the operator's ``--liveness``;
        see :attr:`ports`). ``python -m servegate`` stands in for the image's entry point.
        """
        command = list(self.container["command"]) + list(self.container.get("args", []))
        if command[0] != "servegate":
            raise ValueError(f"unexpected container command {command[0]!r}")
        args = [self._rebase(a) for a in command[1:]]
        if "--port" in args:
            args[args.index("--port") + 1] = "0"
            args[args.index("--host") + 1] = "127.0.0.1"
        return [re.sub(r"://0\.0\.0\.0:(\d+)", self._local_port, a) for a in args]

    def _local_port(self, match: re.Match[str]) -> str:
        port = int(match.group(1))
        if port not in self.ports:
            self.ports[port] = free_port()
        return f"://127.0.0.1:{self.ports[port]}"
