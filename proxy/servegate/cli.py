"""``servegate serve | validate | simulate | quickstart``: parse argv, build settings, call one function."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from servegate import __version__
from servegate.app import GatewaySettings
from servegate.auth.callers import AuthFileError
from servegate.logs import setup_logging
from servegate.server import ListenError, TLSConfigError, run_gateway, run_loop, run_workers
from servegate.simulators.ports import EXAMPLE_PORTS
from servegate.spec.manifest import load_manifests
from servegate.spec.schema import print_crd
from servegate.transport.client import MAX_RESPONSE_BYTES, Timeouts
from servegate.transport.credentials import DEFAULT_AUTHORITY_HOST

log = logging.getLogger("servegate")

# The credentials examples/secrets/ holds, accepted by the quickstart's simulators.
QUICKSTART_CUSTOM_TOKEN = "local-llm-token"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _add_serve_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 = any free)")
    parser.add_argument(
        "--secrets-dir",
        type=Path,
        help="directory holding <scope>/<key> files for {{secrets/<scope>/<key>}} references",
    )
    parser.add_argument(
        "--auth-file", type=Path, help="YAML 'tokens: [{name, sha256, groups}]' of callers"
    )
    parser.add_argument(
        "--auth",
        choices=["file", "kubernetes"],
        default=os.environ.get("SERVEGATE_AUTH") or "file",
        help="who may call: the --auth-file's tokens (file, default), or in-cluster callers' "
        "projected ServiceAccount tokens checked with TokenReviews and queries authorized with "
        "SubjectAccessReviews (kubernetes; --auth-file tokens work beside them)",
    )
    parser.add_argument(
        "--auth-audience",
        default=os.environ.get("SERVEGATE_AUTH_AUDIENCE") or "servegate",
        metavar="AUDIENCE",
        help="--auth kubernetes: the audience callers' tokens must be issued for "
        "(default: servegate)",
    )
    parser.add_argument(
        "--auth-namespace",
        default=os.environ.get("SERVEGATE_AUTH_NAMESPACE") or None,
        metavar="NAMESPACE",
        help="--auth kubernetes: the namespace whose RBAC grants 'query' on servingendpoints "
        "(default: the pod's namespace, else the kubeconfig context's, else default)",
    )
    parser.add_argument(
        "--kubeconfig",
        type=Path,
        help="--auth kubernetes outside a pod: the API server's kubeconfig (default: "
        "in-cluster in a pod, else $KUBECONFIG or ~/.kube/config)",
    )
    parser.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="allow unauthenticated requests on a non-loopback address",
    )
    parser.add_argument("--connect-timeout", type=float, default=10.0, metavar="SECONDS")
    parser.add_argument("--first-byte-timeout", type=float, default=120.0, metavar="SECONDS")
    parser.add_argument("--idle-timeout", type=float, default=60.0, metavar="SECONDS")
    parser.add_argument(
        "--entra-authority-host",
        default=DEFAULT_AUTHORITY_HOST,
        help="Microsoft Entra ID authority host for azuread endpoints",
    )
    parser.add_argument("--no-watch", action="store_true", help="do not reload on file changes")
    parser.add_argument(
        "--access-log",
        action="store_true",
        help="log one line per request (request id, status, duration, endpoint, entity, caller)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="worker processes sharing the port (SO_REUSEPORT); in a cluster, one per pod CPU",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("SERVEGATE_REDIS_URL") or None,
        help="Redis for rate limits shared by several replicas (default: $SERVEGATE_REDIS_URL, "
        "else in memory)",
    )
    parser.add_argument(
        "--rate-limit-failure",
        choices=["open", "closed"],
        default="open",
        help="when the rate-limit storage is down: let requests through (open, default) or "
        "refuse them with 503 (closed)",
    )
    parser.add_argument(
        "--token-limit-mode",
        choices=["cap", "after"],
        default="cap",
        help="token limits: cap max_tokens to the room left so answers stop at the budget "
        "(default), or only charge usage after the answer",
    )
    parser.add_argument(
        "--records-dsn",
        default=os.environ.get("SERVEGATE_RECORDS_DSN") or None,
        metavar="POSTGRES_URL",
        help="PostgreSQL for usage tracking and inference tables, e.g. "
        "postgresql://user@host/db (default: $SERVEGATE_RECORDS_DSN, else JSON log lines "
        "on the servegate.records logger)",
    )
    parser.add_argument(
        "--guardrail-judge",
        default=os.environ.get("SERVEGATE_GUARDRAIL_JUDGE") or None,
        metavar="ENDPOINT",
        help="the endpoint that judges safety and valid_topics guardrails (default: "
        "$SERVEGATE_GUARDRAIL_JUDGE); without it, endpoints using them are not ready",
    )
    parser.add_argument(
        "--guardrail-judge-style",
        choices=["llama-guard", "llama-guard-chat", "instruct"],
        default=os.environ.get("SERVEGATE_GUARDRAIL_JUDGE_STYLE") or "llama-guard",
        help="how the judge is prompted: a Llama Guard 3 prompt built here (llama-guard), "
        "the conversation for a server that applies Llama Guard's template itself "
        "(llama-guard-chat), or any chat model with a JSON-answer prompt (instruct)",
    )
    parser.add_argument(
        "--ca-bundle",
        type=Path,
        default=os.environ.get("SERVEGATE_CA_BUNDLE") or None,
        metavar="PEM",
        help="extra CA certificates trusted for provider TLS, beside the system's (a private "
        "CA, a TLS-inspecting egress proxy); upstream TLS is always verified",
    )
    parser.add_argument(
        "--max-upstream-response",
        type=_mebibytes,
        default=MAX_RESPONSE_BYTES,
        metavar="MIB",
        help="the most a provider may send as one answer, a unary body or one stream event "
        f"(default {MAX_RESPONSE_BYTES // 1048576}); more is a 502",
    )
    parser.add_argument(
        "--upstream-connections-per-host",
        type=int,
        default=0,
        metavar="N",
        help="at most N connections to one provider host and port; more requests wait for one "
        "(default 0: no cap, one connection per request in flight, kept alive for reuse)",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=os.environ.get("SERVEGATE_STATE_DIR") or None,
        metavar="DIR",
        help="store endpoints created through the REST API as manifests in DIR (served "
        "beside PATHS, kept across restarts; their keys go to the secrets directory, "
        "DIR/secrets by default); without it the API is read-only",
    )
    parser.add_argument(
        "--control-plane",
        choices=["kubernetes"],
        default=os.environ.get("SERVEGATE_CONTROL_PLANE") or None,
        help="kubernetes: endpoints created through the REST API become ServingEndpoint "
        "resources in the --auth-namespace, which the operator serves (needs --auth "
        "kubernetes; the gateway's ServiceAccount needs a Role on servingendpoints and "
        "secrets); without it or --state-dir the API is read-only",
    )
    parser.add_argument(
        "--manage-group",
        default=os.environ.get("SERVEGATE_MANAGE_GROUP") or "admins",
        help="with --auth-file, the group whose members may create, change and delete "
        "endpoints (default: admins)",
    )
    parser.add_argument(
        "--metrics-requester-labels",
        action="store_true",
        help="count requests per requester in /metrics (unbounded label values: off by default)",
    )
    # Client connections and shutdown (server.py: the drain sequence).
    parser.add_argument(
        "--client-body-timeout",
        type=_seconds,
        default=30.0,
        metavar="SECONDS",
        help="a request body must arrive completely within this time, else 408 (default 30)",
    )
    parser.add_argument(
        "--keepalive-timeout",
        type=_seconds,
        default=75.0,
        metavar="SECONDS",
        help="close a client's keep-alive connection after this long idle (default 75: "
        "longer than the usual load balancer idle timeout of 60)",
    )
    parser.add_argument(
        "--drain-delay",
        type=_seconds,
        default=_default_drain_delay(),
        metavar="SECONDS",
        help="on SIGTERM, keep accepting connections this long while /readyz answers 503, "
        "so load balancers stop sending new ones first (default: 5 in a Kubernetes pod, "
        "else 0)",
    )
    parser.add_argument(
        "--grace-period",
        type=_seconds,
        default=30.0,
        metavar="SECONDS",
        help="on SIGTERM, requests and streams in flight may finish within this long "
        "(counted from the signal, the drain delay included), then they are cut off; "
        "keep it about 10 s below the pod's terminationGracePeriodSeconds (default 30)",
    )
    # TLS on the gateway's port (server.py: ServerTLS).
    parser.add_argument(
        "--tls-cert",
        type=Path,
        default=os.environ.get("SERVEGATE_TLS_CERT") or None,
        metavar="PEM",
        help="serve HTTPS only (TLS 1.2+) with this certificate chain, leaf first; needs "
        "--tls-key. Both files are reloaded when they change, without a restart (default: "
        "$SERVEGATE_TLS_CERT)",
    )
    parser.add_argument(
        "--tls-key",
        type=Path,
        default=os.environ.get("SERVEGATE_TLS_KEY") or None,
        metavar="PEM",
        help="the certificate's private key, unencrypted PEM (default: $SERVEGATE_TLS_KEY)",
    )


def _seconds(value: str) -> float:
    seconds = float(value)
    if not seconds >= 0 or seconds == float("inf"):
        raise argparse.ArgumentTypeError(f"not a number of seconds: {value!r}")
    return seconds


def _mebibytes(value: str) -> int:
    """A size in MiB (fractions allowed: 0.5 is 512 KiB) as bytes."""
    try:
        mib = float(value)
    except ValueError:
        mib = float("nan")
    if not 0 < mib <= 1024:
        raise argparse.ArgumentTypeError(f"not a size in MiB between 0 and 1024: {value!r}")
    return int(mib * 1048576)


def _default_drain_delay() -> float:
    """5 s in a Kubernetes pod (the kubelet sets KUBERNETES_SERVICE_HOST in every
    container): time for the endpoint removal to reach every node. Elsewhere 0."""
    return 5.0 if os.environ.get("KUBERNETES_SERVICE_HOST") else 0.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="servegate", description=__doc__)
    parser.add_argument("--version", action="version", version=f"servegate {__version__}")
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve ServingEndpoint manifests")
    serve.add_argument("paths", nargs="+", type=Path, help="YAML files or directories of them")
    _add_serve_args(serve)

    validate = sub.add_parser("validate", help="check manifests offline")
    validate.add_argument("paths", nargs="+", type=Path)

    simulate = sub.add_parser("simulate", help="serve provider simulators on 127.0.0.1")
    simulate.add_argument("--host", default="127.0.0.1")
    simulate.add_argument(
        "--allow-external",
        action="store_true",
        help="allow a non-loopback --host (a simulator Service in a test cluster)",
    )
    for name, port in EXAMPLE_PORTS.items():
        simulate.add_argument(f"--{name}-port", type=int, default=port, metavar="PORT")
    simulate.add_argument(
        "--only", default=",".join(EXAMPLE_PORTS), help="comma-separated simulators to run"
    )
    simulate.add_argument("--openai-key", action="append", help="accepted OpenAI/Azure API key")
    simulate.add_argument("--custom-token", default=QUICKSTART_CUSTOM_TOKEN)
    simulate.add_argument("--tls-cert", type=Path, help="PEM certificate for the Entra simulator")
    simulate.add_argument("--tls-key", type=Path, help="PEM key for the Entra simulator")

    sub.add_parser("crd", help="print the ServingEndpoint CustomResourceDefinition (YAML)")

    operator = sub.add_parser(
        "operator",
        help="run the Kubernetes operator (see 'servegate operator --help')",
        add_help=False,
    )
    operator.add_argument("operator_args", nargs=argparse.REMAINDER)

    quickstart = sub.add_parser(
        "quickstart", help="serve examples/ against local simulators: no keys, no network"
    )
    quickstart.add_argument("--examples", type=Path, default=Path("examples"))
    quickstart.add_argument("--port", type=int, default=8080)
    return parser


def settings_from_args(args: argparse.Namespace) -> GatewaySettings:
    return GatewaySettings(
        paths=tuple(args.paths),
        secrets_dir=args.secrets_dir,
        auth_file=args.auth_file,
        auth=args.auth,
        auth_audience=args.auth_audience,
        auth_namespace=args.auth_namespace,
        kubeconfig=args.kubeconfig,
        timeouts=Timeouts(args.connect_timeout, args.first_byte_timeout, args.idle_timeout),
        entra_authority_host=args.entra_authority_host,
        watch=not args.no_watch,
        redis_url=args.redis_url,
        rate_limit_failure=args.rate_limit_failure,
        token_limit_mode=args.token_limit_mode,
        access_log=args.access_log,
        records_dsn=args.records_dsn,
        guardrail_judge=args.guardrail_judge,
        guardrail_judge_style=args.guardrail_judge_style,
        metrics_requester_labels=args.metrics_requester_labels,
        ca_bundle=args.ca_bundle,
        max_upstream_response=args.max_upstream_response,
        upstream_connections_per_host=max(0, args.upstream_connections_per_host),
        state_dir=args.state_dir,
        control_plane=args.control_plane,
        manage_group=args.manage_group,
        client_body_timeout=args.client_body_timeout,
        keepalive_timeout=args.keepalive_timeout,
        drain_delay=args.drain_delay,
        grace_period=args.grace_period,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
    )


def check_exposure(args: argparse.Namespace) -> str | None:
    """The refusal message when serving without auth where others can reach us."""
    if args.auth_file is not None or args.auth == "kubernetes":
        return None
    if is_loopback(args.host):
        log.warning(
            "no --auth-file: accepting unauthenticated requests (allowed because %s is loopback)",
            args.host,
        )
        return None
    if args.insecure_no_auth:
        log.warning(
            "no --auth-file and --insecure-no-auth: ANYONE who can reach %s may query", args.host
        )
        return None
    return (
        f"refusing to serve without authentication on {args.host}: pass --auth-file FILE, "
        "bind a loopback address, or pass --insecure-no-auth"
    )


def cmd_serve(args: argparse.Namespace) -> int:
    if (args.tls_cert is None) != (args.tls_key is None):
        given, missing = (
            ("--tls-cert", "--tls-key") if args.tls_key is None else ("--tls-key", "--tls-cert")
        )
        print(
            f"servegate: {given} needs {missing} (or $SERVEGATE_TLS_CERT and "
            "$SERVEGATE_TLS_KEY): give both to serve HTTPS, or neither",
            file=sys.stderr,
        )
        return 2
    refusal = check_exposure(args)
    if refusal:
        print(f"servegate: {refusal}", file=sys.stderr)
        return 2
    settings = settings_from_args(args)
    if settings.drain_delay >= settings.grace_period > 0:
        print(
            "servegate: --drain-delay must be shorter than --grace-period (the grace period "
            "counts from the signal and includes the delay)",
            file=sys.stderr,
        )
        return 2
    if args.workers > 1 and not settings.redis_url:
        log.warning(
            "%d workers without --redis-url: each worker counts rate limits on its own, so a "
            "limit of N lets up to %d times N through; use Redis to share them",
            args.workers,
            args.workers,
        )
    try:
        if args.workers > 1:
            return run_workers(settings, args.host, args.port, args.workers)
        run_loop(run_gateway(settings, args.host, args.port))
    except AuthFileError as exc:
        print(f"servegate: {exc}", file=sys.stderr)
        return 2
    except ListenError as exc:
        print(f"servegate: {exc}", file=sys.stderr)
        return 2
    except TLSConfigError as exc:
        print(f"servegate: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    missing = [str(p) for p in args.paths if not p.exists()]
    if missing:
        print(f"servegate: no such file or directory: {', '.join(missing)}", file=sys.stderr)
        return 2
    result = load_manifests(args.paths)
    for endpoint in result.endpoints:
        print(
            f"ok     {endpoint.source}: endpoint '{endpoint.name}' ({endpoint.manifest.spec.task})"
        )
    for warning in result.warnings:
        print(f"warn   {warning}")
    for error in result.errors:
        print(f"error  {error}")
    print(f"{len(result.endpoints)} valid, {len(result.errors)} invalid")
    return 1 if result.errors else 0


def cmd_simulate(args: argparse.Namespace) -> int:
    if not is_loopback(args.host) and not args.allow_external:
        print(
            "servegate: simulators bind loopback addresses only; pass --allow-external "
            "to serve them to a test cluster",
            file=sys.stderr,
        )
        return 2
    from servegate.quickstart import run_simulate  # the simulators load only when asked for

    try:
        asyncio.run(run_simulate(args))
    except OSError as exc:
        print(f"servegate: cannot start the simulators: {exc.strerror or exc}", file=sys.stderr)
        return 2
    return 0


def cmd_quickstart(args: argparse.Namespace) -> int:
    if not (args.examples / "chat.yaml").is_file():
        print(
            f"servegate: no examples in {args.examples}: run from the repository root "
            "or pass --examples DIR",
            file=sys.stderr,
        )
        return 2
    log.warning("quickstart: unauthenticated, on 127.0.0.1 only, against local simulators")
    from servegate.quickstart import run_quickstart

    try:
        asyncio.run(run_quickstart(args.examples, args.port))
    except OSError as exc:
        print(
            f"servegate: cannot start: {exc.strerror or exc} (is something on the port?)",
            file=sys.stderr,
        )
        return 2
    return 0


def cmd_operator(args: argparse.Namespace) -> int:
    # Imported here, for this subcommand only: the gateway itself never imports the operator.
    from servegate_operator.main import main as operator_main

    return operator_main(args.operator_args)


def cmd_crd(args: argparse.Namespace) -> int:
    print_crd()
    return 0


COMMANDS = {
    "crd": cmd_crd,
    "operator": cmd_operator,
    "serve": cmd_serve,
    "validate": cmd_validate,
    "simulate": cmd_simulate,
    "quickstart": cmd_quickstart,
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["operator"]:  # its own parser takes every argument after the word
        return cmd_operator(argparse.Namespace(operator_args=argv[1:]))
    args = build_parser().parse_args(argv)
    stop_logging = setup_logging(args.log_level)
    try:
        return COMMANDS[args.command](args)
    finally:
        stop_logging()
