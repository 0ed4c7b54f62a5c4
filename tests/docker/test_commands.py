"""The commands the image's containers run exist in the installed distribution.

The image's ENTRYPOINT, the Helm chart's operator container, the plain manifests in deploy/
and the gateway Deployment the operator renders all start `servegate <subcommand> --flags`:
each must be a console script of the distribution, each subcommand must run, and each flag
must be one that subcommand knows.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from importlib.metadata import distribution
from pathlib import Path
from typing import Any

import pytest
import yaml

from servegate import __version__
from servegate_operator.render.gateway import render_deployment
from servegate_operator.settings import GatewayDefaults
from tests.docker.model import REPO, load

CHART_TEMPLATES = REPO / "helm" / "servegate" / "templates"
DEPLOY = REPO / "deploy"


def console_scripts() -> dict[str, str]:
    return {
        ep.name: ep.value
        for ep in distribution("servegate").entry_points
        if ep.group == "console_scripts"
    }


@cache
def run(*args: str) -> subprocess.CompletedProcess[str]:
    """`python -m servegate ARGS` from outside the source tree: the installed distribution."""
    return subprocess.run(
        [sys.executable, "-m", "servegate", *args],
        cwd=Path("/"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def help_text(subcommand: str) -> str:
    result = run(subcommand, "--help")
    assert result.returncode == 0, f"servegate {subcommand} --help: {result.stderr}"
    return result.stdout


def flags(argv: list[str]) -> list[str]:
    return [word.split("=", 1)[0] for word in argv if word.startswith("--")]


def assert_known(subcommand: str, argv: list[str], where: str) -> None:
    text = help_text(subcommand)
    for flag in flags(argv):
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text), (
            f"{where}: servegate {subcommand} has no {flag}"
        )


def test_servegate_is_a_console_script() -> None:
    scripts = console_scripts()
    assert scripts.get("servegate") == "servegate.cli:main"
    assert scripts.get("servegate-operator") == "servegate_operator.main:main"
    for ep in distribution("servegate").entry_points:
        if ep.group == "console_scripts":
            assert callable(ep.load()), ep


def test_the_image_entrypoint_is_the_console_script() -> None:
    entrypoint = load().final.of("ENTRYPOINT")[-1].exec_form()
    assert entrypoint and entrypoint[0] in console_scripts()


@pytest.mark.parametrize("subcommand", ["serve", "operator"])
def test_both_roles_run(subcommand: str) -> None:
    assert help_text(subcommand).startswith(f"usage: servegate {subcommand}")


def test_version() -> None:
    result = run("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"servegate {__version__}"


@pytest.mark.parametrize(
    "defaults",
    [GatewayDefaults(), GatewayDefaults(auth_secret="gateway-callers")],
    ids=["insecure-no-auth", "auth-file"],
)
def test_the_operator_rendered_gateway_command_exists(defaults: GatewayDefaults) -> None:
    deployment = render_deployment("ns", [], defaults)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    command = container["command"]
    args = container["args"]
    assert command[0] in console_scripts()
    argv = [*command[1:], *args]
    assert argv[0] == "serve"
    assert_known("serve", argv[1:], "the operator's gateway Deployment")


def chart_commands() -> Iterator[tuple[str, list[str]]]:
    """`command:`/`args:` lists of the chart's templates, read as text (they are templates)."""
    for template in sorted(CHART_TEMPLATES.glob("*.yaml")):
        lines = template.read_text().splitlines()
        pending: list[str] | None = None  # a `command: [servegate]` waiting for its args
        for i, line in enumerate(lines):
            key = re.match(r"^\s*(command|args):\s*$", line)
            if not key:
                continue
            items = []
            for item in lines[i + 1 :]:
                if re.match(r"^\s*\{\{.*\}\}\s*$", item):
                    continue
                entry = re.match(r"^\s*-\s+(.*?)\s*$", item)
                if not entry:
                    break
                items.append(entry.group(1).strip("\"'"))
            if key.group(1) == "command":
                pending = items
            elif pending is not None:
                items, pending = [*pending, *items], None
            if items and items[0] == "servegate" and (len(items) > 1 or key.group(1) == "args"):
                yield f"{template.relative_to(REPO)}:{i + 1}", items


def manifest_commands() -> Iterator[tuple[str, list[str]]]:
    for manifest in sorted(DEPLOY.rglob("*.yaml")):
        for document in yaml.safe_load_all(manifest.read_text()):
            for container in containers(document):
                argv = [*container.get("command", []), *container.get("args", [])]
                if argv[:1] == ["servegate"]:
                    yield f"{manifest.relative_to(REPO)} {container['name']}", argv


def containers(document: Any) -> Iterator[dict[str, Any]]:
    if not isinstance(document, dict):
        return
    spec = document.get("spec", {}).get("template", {}).get("spec", {})
    yield from spec.get("containers", []) or []
    yield from spec.get("initContainers", []) or []


def test_the_charts_and_manifests_commands_exist() -> None:
    found = [*chart_commands(), *manifest_commands()]
    if not found:
        pytest.skip("no chart or manifest runs servegate yet")
    for where, argv in found:
        subcommand = argv[1]
        assert subcommand in ("serve", "operator"), f"{where}: servegate {subcommand}"
        assert_known(subcommand, argv[2:], where)
