"""Run the operator: kopf with our handlers, over chosen namespaces or all of them."""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="servegate operator", description="Run the servegate operator."
    )
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "--namespace", "-n", action="append", default=[], help="watch this namespace (repeatable)"
    )
    scope.add_argument(
        "--all-namespaces", "-A", action="store_true", help="watch every namespace (default)"
    )
    parser.add_argument("--standalone", action="store_true", help="no peering: one replica only")
    parser.add_argument(
        "--peering", default="servegate", help="kopf peering object for several replicas"
    )
    parser.add_argument(
        "--liveness", default="http://0.0.0.0:8081/healthz", help="liveness endpoint URL"
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    parser.add_argument(
        "--log-format",
        default="json",
        choices=["json", "full", "plain"],
        help="json (default: one object per line, with the object's reference) or text",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the flags, set up structured logging, and run kopf until signalled."""
    args = build_parser().parse_args(argv)
    import kopf

    kopf.configure(
        log_format=kopf.LogFormat[args.log_format.upper()],
        log_refkey="k8s",
        debug=args.log_level == "DEBUG",
        quiet=args.log_level in ("WARNING", "ERROR"),
    )
    logging.getLogger().setLevel(args.log_level)

    from servegate_operator import handlers  # noqa: F401  (registers the handlers)
    from servegate_operator.runtime import RUNTIME

    RUNTIME.namespaces = tuple(args.namespace)

    asyncio.run(
        kopf.operator(
            clusterwide=not args.namespace,
            namespaces=list(args.namespace),
            standalone=args.standalone,
            peering_name=None if args.standalone else args.peering,
            liveness_endpoint=args.liveness,
        )
    )
    return 0
