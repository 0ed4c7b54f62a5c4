"""Running the gateway process(es): one event loop, or N workers sharing one port.

``--workers N`` starts N interpreter processes (``spawn``, so nothing is shared by
accident), each a complete gateway binding the same host and port with ``SO_REUSEPORT``:
the kernel spreads connections over them. The parent binds the port first without
listening (so port 0 resolves once), waits until every worker listens, then supervises:
SIGTERM or SIGINT is passed on and every worker drains; a worker that dies takes the
others down with exit status 1, for the process supervisor (Kubernetes) to restart.

Metrics are aggregated across workers with prometheus_client's multiprocess mode (one
directory of value files, created here). Rate limits are per worker unless they are in
Redis (``--redis-url``).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import Callable, Coroutine
from multiprocessing.queues import Queue
from typing import Any

from aiohttp import web
from prometheus_client import multiprocess

from servegate.app import GatewaySettings, create_app
from servegate.ingress.protocol import GatewayRunner
from servegate.logs import setup_logging

log = logging.getLogger("servegate")

_READY_TIMEOUT_S = 60.0


class ListenError(OSError):
    """The gateway could not bind its address (in use, not permitted)."""


def _show(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def run_gateway(
    settings: GatewaySettings,
    host: str,
    port: int,
    *,
    banner: str | None = None,
    reuse_port: bool = False,
    on_listening: Callable[[str], None] | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM; in-flight requests get time to finish."""
    access = logging.getLogger("servegate.access")
    access.setLevel(logging.INFO if settings.access_log else logging.WARNING)
    app = create_app(settings)
    runner = GatewayRunner(app, access_log=None, shutdown_timeout=30)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_port=reuse_port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ListenError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    bound_host, bound_port = runner.addresses[0][:2]
    url = _show(str(bound_host), int(bound_port))
    if on_listening is not None:
        on_listening(url)
    else:
        print(f"servegate: listening on {url}", flush=True)
    if banner:
        print(banner, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        await runner.cleanup()


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` on uvloop (libuv's event loop: a faster socket path than asyncio's
    selector loop), or on asyncio's own loop where uvloop is not installed."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def _worker(settings: GatewaySettings, host: str, port: int, ready: Queue[Any]) -> None:
    stop_logging = setup_logging(
        os.environ.get("SERVEGATE_LOG_LEVEL", "INFO"),
        fmt=f"%(asctime)s %(levelname)s %(name)s [worker {os.getpid()}] %(message)s",
    )
    try:
        run_loop(run_gateway(settings, host, port, reuse_port=True, on_listening=ready.put))
    except ListenError as exc:
        ready.put(f"error: {exc}")
    finally:
        stop_logging()


def run_workers(settings: GatewaySettings, host: str, port: int, workers: int) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    reservation = socket.socket(family, socket.SOCK_STREAM)
    metrics_dir = tempfile.mkdtemp(prefix="servegate-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    os.environ["SERVEGATE_LOG_LEVEL"] = logging.getLevelName(logging.getLogger().level)
    processes: list[Any] = []
    try:
        reservation.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            reservation.bind((host, port))
        except OSError as exc:
            raise ListenError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        port = reservation.getsockname()[1]
        context = multiprocessing.get_context("spawn")
        ready: Queue[Any] = context.Queue()
        for _ in range(workers):
            process = context.Process(target=_worker, args=(settings, host, port, ready))
            process.start()
            processes.append(process)
        urls = [ready.get(timeout=_READY_TIMEOUT_S) for _ in processes]
        failed = [u for u in urls if u.startswith("error: ")]
        if failed:
            raise ListenError(failed[0].removeprefix("error: "))
        print(f"servegate: listening on {urls[0]} ({workers} workers)", flush=True)
        return _supervise(processes)
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
        for process in processes:
            process.join(timeout=40)
            if process.pid is not None:
                multiprocess.mark_process_dead(process.pid)  # type: ignore[no-untyped-call]
        reservation.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _supervise(processes: list[Any]) -> int:
    """Pass SIGTERM/SIGINT on; if a worker dies on its own, stop the rest (status 1)."""
    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for process in processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    sentinels: dict[Any, Any] = {process.sentinel: process for process in processes}
    while sentinels:
        done = multiprocessing.connection.wait(list(sentinels))
        for sentinel in done:
            process = sentinels.pop(sentinel)
            if not stopping:
                log.error(
                    "worker %s exited with %s; stopping the others", process.pid, process.exitcode
                )
                stop(signal.SIGTERM, None)
                return 1
    return 0
