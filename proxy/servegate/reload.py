"""Watch the manifests, the secrets directory and the auth file; reload on any change.

``watchfiles`` (Rust ``notify``) watches directories, not single files: editors and
Kubernetes both replace files by rename, which would orphan a watch on the old inode. So
the parent directory of each named file is watched, recursively for directories, and a
filter keeps only events under the paths that matter. A mounted ConfigMap or Secret swaps
its ``..data`` symlink atomically; that is a change inside a watched directory too.
Loading runs in a worker thread and the new config is swapped in whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import watchfiles
from aiohttp import web

from servegate import keys
from servegate.auth.callers import AuthFileError

log = logging.getLogger(__name__)


def _watch_roots(paths: list[Path]) -> tuple[list[Path], list[Path]]:
    """(directories to watch, paths whose changes count)."""
    roots: set[Path] = set()
    relevant: list[Path] = []
    for path in paths:
        absolute = path.absolute()
        relevant.append(absolute)
        if not absolute.is_dir():
            # A file in a mounted Secret or ConfigMap is a symlink into ``..data``; kubelet
            # swaps that symlink, and the file's own path never sees an event.
            relevant.append(absolute.parent / "..data")
        root = absolute if absolute.is_dir() else absolute.parent
        while not root.exists() and root != root.parent:  # watch for it to appear
            root = root.parent
        roots.add(root)
    return sorted(roots), relevant


async def reload_now(app: web.Application) -> None:
    holder = app[keys.config_holder]
    metrics = app[keys.metrics]
    try:
        app[keys.auth_holder].reload()
        config = await asyncio.to_thread(holder.source.load, holder.current)
    except AuthFileError as exc:
        metrics.reloads.labels("failed").inc()
        log.error("reload failed, keeping the previous config: %s", exc)
        return
    previous, holder.current = holder.current, config
    metrics.reloads.labels("applied").inc()
    app[keys.recorder].config_loaded(previous, config)
    publish_readiness(app)
    ready = sum(1 for ep in config.endpoints.values() if ep.ready)
    log.info(
        "config generation %d loaded: %d endpoints (%d ready), %d invalid manifests",
        config.generation,
        len(config.endpoints),
        ready,
        len(config.errors),
    )


def publish_readiness(app: web.Application) -> None:
    config = app[keys.config_holder].current
    ready = sum(1 for ep in config.endpoints.values() if ep.ready)
    gauge = app[keys.metrics].endpoints_ready
    gauge.labels("true").set(ready)
    gauge.labels("false").set(len(config.endpoints) - ready + len(config.invalid))


async def watch(app: web.Application, paths: list[Path], stop: asyncio.Event) -> None:
    roots, relevant = _watch_roots(paths)

    def matters(_change: watchfiles.Change, changed: str) -> bool:
        changed_path = Path(changed)
        return any(changed_path == p or p in changed_path.parents for p in relevant)

    async for _changes in watchfiles.awatch(
        *roots, watch_filter=matters, stop_event=stop, debounce=200, step=20, recursive=True
    ):
        await reload_now(app)


def watcher_context(
    paths: list[Path],
) -> Callable[[web.Application], AsyncIterator[None]]:
    """A ``cleanup_ctx`` entry running ``watch`` for the app's lifetime."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        stop = asyncio.Event()
        task = asyncio.create_task(watch(app, paths, stop), name="servegate-config-watch")
        yield
        stop.set()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return ctx
