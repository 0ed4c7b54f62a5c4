"""The command line as a user runs it, from the repository root."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import requests

from servegate.quickstart import QUICKSTART_TRY
from servegate.spec import load_manifests
from tests.conftest import REPO, GatewayProcess, endpoint_doc, openai_entity, write_yaml


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


def test_validate_warns_about_unknown_fields(tmp_path: Path) -> None:
    """Unknown fields are kept, as the platform does, but a misplaced one is reported."""
    doc = endpoint_doc("e", [openai_entity("m", "http://127.0.0.1:1/v1")])
    doc["spec"]["config"]["ai_gateway"] = {"rate_limits": []}  # belongs one level up
    path = write_yaml(tmp_path / "e.yaml", doc)
    result = run("-m", "servegate", "validate", str(path))
    assert result.returncode == 0
    assert f"warn   {path}#0 (endpoint 'e'): spec.config.ai_gateway: unknown field" in result.stdout


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


def test_serve_says_when_it_accepts_anyone(tmp_path: Path) -> None:
    """Without auth on loopback it serves and says so at start; on a public address it
    starts only with --insecure-no-auth, and says that too."""
    examples = str(REPO / "examples")
    cases = (
        ("127.0.0.1", [], "accepting unauthenticated requests"),
        ("0.0.0.0", ["--insecure-no-auth"], "ANYONE who can reach 0.0.0.0 may query"),
    )
    for host, extra, warning in cases:
        gateway = GatewayProcess(
            ["serve", examples, "--host", host, "--no-watch", *extra], tmp_path / f"{host}.log"
        )
        try:
            port = gateway.url.rsplit(":", 1)[1]
            ready = requests.get(f"http://127.0.0.1:{port}/readyz", timeout=10)
            assert ready.status_code == 200
        finally:
            gateway.stop()
        assert warning in gateway.logs()


def test_the_gateway_never_imports_the_operator() -> None:
    """The gateway runs without the operator: importing and building it loads neither
    servegate_operator nor kopf (the operator imports the gateway's spec, never the
    reverse)."""
    probe = (
        "import sys, servegate.cli, servegate.server, servegate.app, servegate.pipeline;"
        "from pathlib import Path;"
        "servegate.app.create_app(servegate.app.GatewaySettings(paths=(Path('examples'),),"
        " watch=False));"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in"
        " ('servegate_operator', 'kopf')))"
    )
    result = run("-c", probe, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_serve_reports_a_bad_auth_file(tmp_path: Path) -> None:
    auth = tmp_path / "auth.yaml"
    auth.write_text("tokens: [{name: ana, sha256: not-hex}]\n")
    result = run(
        "-m", "servegate", "serve", str(REPO / "examples"), "--auth-file", str(auth), timeout=30
    )
    assert result.returncode == 2
    assert "tokens.0.sha256" in result.stderr
    assert "Traceback" not in result.stderr


QUERIES = {
    "llm/v1/chat": {"messages": [{"role": "user", "content": "Hello!"}]},
    "llm/v1/completions": {"prompt": "Say hello", "max_tokens": 10},
    "llm/v1/embeddings": {"input": ["servegate"]},
}


def test_quickstart_serves_the_examples_offline(tmp_path: Path) -> None:
    """The README's first command: examples/ over the simulators, no keys, no network."""
    gateway = GatewayProcess(["quickstart"], tmp_path / "quickstart.log")
    try:
        assert (
            "servegate: simulator openai listening on http://127.0.0.1:8901" in gateway.stdout_lines
        )
        with requests.Session() as client:
            chat = client.post(
                gateway.url + "/serving-endpoints/chat/invocations",
                json={"messages": [{"role": "user", "content": "Hello!"}]},
                timeout=10,
            )
            assert chat.status_code == 200
            assert chat.headers["served-model-name"] in ("gpt-4o-mini", "local-llama")
            emb = client.post(
                gateway.url + "/serving-endpoints/embeddings/invocations",
                json={"input": ["servegate"]},
                timeout=10,
            )
            assert emb.status_code == 200
            listed = client.get(gateway.url + "/api/2.0/serving-endpoints", timeout=10).json()[
                "endpoints"
            ]
            examples = load_manifests([REPO / "examples"]).endpoints
            assert {ep["name"]: ep["state"]["ready"] for ep in listed} == {
                e.name: "READY" for e in examples
            }
            for example in examples:  # every example answers through its simulator
                body = QUERIES[str(example.manifest.spec.task)]
                url = f"{gateway.url}/serving-endpoints/{example.name}/invocations"
                answer = client.post(url, json=body, timeout=10)
                assert answer.status_code == 200, (example.name, answer.text)
        # The commands it prints to try it, run as printed (python3 as this test's Python).
        outputs = [
            run_shell(command.replace("python3 ", f"{sys.executable} ", 1))
            for command in printed_commands(QUICKSTART_TRY.format(port=gateway.url.rsplit(":")[-1]))
        ]
        chat_out, stream_out, embed_out, sdk_out, list_out = outputs
        assert json.loads(chat_out)["choices"][0]["message"]["content"]
        assert stream_out.rstrip().endswith("data: [DONE]")
        assert json.loads(embed_out)["data"][0]["embedding"]
        assert sdk_out.strip()
        assert {ep["name"] for ep in json.loads(list_out)["endpoints"]} >= {"chat", "embeddings"}
    finally:
        gateway.stop()


def printed_commands(text: str) -> list[str]:
    """The shell commands in the quickstart's banner: lines starting with curl or python3,
    with their backslash continuations."""
    commands: list[str] = []
    joined = text.replace("\\\n", " ")
    for line in joined.splitlines():
        line = line.strip()
        if line.startswith(("curl ", "python3 ")):
            commands.append(line)
    return commands


def run_shell(command: str) -> str:
    result = subprocess.run(
        ["bash", "-c", command], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, (command, result.stderr)
    return result.stdout


def test_simulate_serves_the_chosen_simulators(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "servegate",
            "simulate",
            "--only",
            "openai",
            "--openai-port",
            "0",
            "--openai-key",
            "k1",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("servegate: simulator openai listening on http://127.0.0.1:")
        url = line.split(" on ", 1)[1].strip()
        ok = requests.post(
            f"{url}/v1/chat/completions",
            headers={"Authorization": "Bearer k1"},
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
            timeout=10,
        )
        assert ok.status_code == 200
    finally:
        proc.terminate()
        assert proc.wait(timeout=15) == 0
