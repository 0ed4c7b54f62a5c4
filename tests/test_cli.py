"""The command line as a user runs it, from the repository root."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, endpoint_doc, openai_entity, write_yaml


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_operator_folder_does_not_shadow_the_stdlib() -> None:
    """`operator/` holds code but is no package: `python -m` from the root must still work."""
    assert not (REPO / "operator" / "__init__.py").exists()
    pytest_version = run("-m", "pytest", "--version")
    assert pytest_version.returncode == 0, pytest_version.stderr
    servegate_version = run("-m", "servegate", "--version")
    assert servegate_version.returncode == 0, servegate_version.stderr
    assert servegate_version.stdout.startswith("servegate ")
    check = "import operator, sysconfig, servegate_operator; print(operator.__file__.startswith(sysconfig.get_paths()['stdlib']))"
    assert run("-c", check).stdout.strip() == "True"


def test_validate_reports_file_document_and_field(tmp_path: Path) -> None:
    good = endpoint_doc("good", [openai_entity("m", "http://127.0.0.1:1/v1")])
    bad = endpoint_doc("bad", [openai_entity("m", "http://127.0.0.1:1/v1", task="llm/v1/chatty")])
    path = write_yaml(tmp_path / "e.yaml", good, bad)
    result = run("-m", "servegate", "validate", str(path))
    assert result.returncode == 1
    assert f"ok     {path}#0: endpoint 'good'" in result.stdout
    assert (
        f"error  {path}#1 (endpoint 'bad'): spec.config.served_entities[0].external_model.task"
        in result.stdout
    )
    assert "llm/v1/chat" in result.stdout  # the allowed values are listed
    assert run("-m", "servegate", "validate", str(REPO / "examples")).returncode == 0
    missing = run("-m", "servegate", "validate", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "no such file" in missing.stderr


def test_serve_refuses_a_public_address_without_auth(tmp_path: Path) -> None:
    result = run(
        "-m", "servegate", "serve", str(REPO / "examples"), "--host", "0.0.0.0", timeout=30
    )
    assert result.returncode == 2
    assert "--auth-file" in result.stderr and "--insecure-no-auth" in result.stderr


def test_serve_reports_a_bad_auth_file(tmp_path: Path) -> None:
    auth = tmp_path / "auth.yaml"
    auth.write_text("tokens: [{name: ana, sha256: not-hex}]\n")
    result = run(
        "-m", "servegate", "serve", str(REPO / "examples"), "--auth-file", str(auth), timeout=30
    )
    assert result.returncode == 2
    assert "tokens.0.sha256" in result.stderr
    assert "Traceback" not in result.stderr
