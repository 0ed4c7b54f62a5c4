"""Run the operator: kopf with our handlers, over chosen namespaces or all of them.

Several replicas: kopf's peering makes every operator that sees a live peer of higher
priority pause, and every operator that sees one of the *same* priority pause too (kopf
cannot tell which should win). So each process takes its own priority, random unless
``--priority`` is given: the replica with the highest is the one that works, the others
stand by. A replica that stops cleanly (SIGTERM) leaves the peering at once and the next
one resumes within a second; one that dies without a word is presumed dead after
``--peering-lifetime`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
from collections.abc import Sequence

MAX_AUTO_PRIORITY = 2**31 - 1
"""Random priorities are drawn from [1, MAX_AUTO_PRIORITY]: two replicas collide (and both
pause, with kopf's warning, until one restarts) with a chance of about one in 2**31. A
debugging operator given a higher ``--priority`` pauses them all."""


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def _priority(text: str) -> int:
    value = _whole(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def _lifetime(text: str) -> int:
    value = _whole(text)
    if value < 10:
        raise argparse.ArgumentTypeError("must be 10 seconds or more")
    return value


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
        "--peering",
        default="servegate",
        help="the kopf peering object the replicas coordinate through (applied at start)",
    )
    parser.add_argument(
        "--priority",
        type=_priority,
        default=None,
        help="peering priority: the live replica with the highest works, the others stand "
        f"by (default: random in 1..{MAX_AUTO_PRIORITY}, so replicas never tie)",
    )
    parser.add_argument(
        "--peering-lifetime",
        type=_lifetime,
        default=60,
        metavar="SECONDS",
        help="a replica that stops renewing its peering entry for this long is presumed dead "
        "and a standby takes over (default: 60; entries are renewed 5 to 10 s before then)",
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
    RUNTIME.peering_lifetime_s = args.peering_lifetime
    RUNTIME.peering = None if args.standalone else args.peering
    priority = args.priority
    if priority is None:
        priority = random.SystemRandom().randint(1, MAX_AUTO_PRIORITY)
    if not args.standalone:
        logging.getLogger(__name__).info(
            "peering %r with priority %d: the live replica with the highest priority works",
            args.peering,
            priority,
        )

    asyncio.run(
        kopf.operator(
            clusterwide=not args.namespace,
            namespaces=list(args.namespace),
            standalone=args.standalone,
            peering_name=RUNTIME.peering,
            liveness_endpoint=args.liveness,
            priority=priority,
        )
    )
    return 0
