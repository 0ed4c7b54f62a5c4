"""Manifest documents and `load_manifests`: files, directories, ConfigMap mounts, errors."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from servegate.spec import (
    LoadResult,
    ManifestError,
    ServingEndpointManifest,
    format_loc,
    load_manifests,
    validation_errors,
)

CANARY = "sk-CANARY-123"


def manifest_yaml(name: str, *, percentage: int = 100, plaintext: bool = False) -> str:
    key = (
        f'openai_api_key_plaintext: "{CANARY}"'
        if plaintext
        else 'openai_api_key: "{{secrets/my_scope/openai_key}}"'
    )
    return f"""\
apiVersion: servegate.io/v1alpha1
kind: ServingEndpoint
metadata:
  name: {name}
spec:
  config:
    served_entities:
      - name: gpt-a
        external_model:
          name: gpt-4o-mini
          provider: openai
          task: llm/v1/chat
          openai_config:
            {key}
            openai_api_base: "http://127.0.0.1:8901/v1"
    traffic_config:
      routes: [{{served_model_name: gpt-a, traffic_percentage: {percentage}}}]
  ai_gateway:
    usage_tracking_config: {{enabled: true}}
    rate_limits: [{{calls: 10, key: user, renewal_period: minute}}]
    fallback_config: {{enabled: true}}
  tags: [{{key: team, value: ml}}]
  description: "{name} endpoint"
"""


SECRET_DOC = """\
apiVersion: v1
kind: Secret
metadata: {name: my_scope}
stringData: {openai_key: abc}
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def names(result: LoadResult) -> list[str]:
    return [endpoint.name for endpoint in result.endpoints]


def test_single_manifest_loads(tmp_path: Path) -> None:
    path = write(tmp_path / "chat.yaml", manifest_yaml("chat"))
    result = load_manifests([path])
    assert result.errors == []
    [loaded] = result.endpoints
    assert (loaded.name, loaded.source) == ("chat", f"{path}#0")
    assert loaded.manifest.metadata.name == "chat"
    assert loaded.manifest.spec.routes() == {"gpt-a": 100}


def test_multi_document_file_with_one_bad_document(tmp_path: Path) -> None:
    text = "---\n".join(
        [manifest_yaml("chat"), manifest_yaml("broken", percentage=90, plaintext=True)]
    )
    path = write(tmp_path / "chat.yaml", text)
    result = load_manifests([path])
    assert names(result) == ["chat"]
    [error] = result.errors
    assert error == ManifestError(
        source=f"{path}#1",
        name="broken",
        field="spec.config.traffic_config.routes",
        message="traffic percentages must sum to 100, got 90",
    )
    assert str(error) == (
        f"{path}#1 (endpoint 'broken'): spec.config.traffic_config.routes: "
        "traffic percentages must sum to 100, got 90"
    )
    assert CANARY not in str(error)


def test_other_kinds_and_empty_documents_are_skipped(tmp_path: Path) -> None:
    text = "---\n".join(
        [
            SECRET_DOC,
            "",
            "# only a comment\n",
            manifest_yaml("chat"),
            "apiVersion: other.io/v1\nkind: ServingEndpoint\nmetadata: {name: x}\n",
        ]
    )
    result = load_manifests([write(tmp_path / "all.yaml", text)])
    assert result.errors == []
    assert [e.source.rsplit("#")[1] for e in result.endpoints] == ["3"]


def test_non_mapping_document_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path / "list.yaml", manifest_yaml("chat") + "---\n- a\n- b\n")
    result = load_manifests([path])
    assert names(result) == ["chat"]
    assert [str(e) for e in result.errors] == [f"{path}#1: document is not a mapping (got list)"]


def test_directory_is_sorted_non_recursive_and_skips_hidden(tmp_path: Path) -> None:
    write(tmp_path / "b.yml", manifest_yaml("bravo"))
    write(tmp_path / "a.yaml", manifest_yaml("alpha"))
    write(tmp_path / "c.json", json.dumps(_manifest_dict("charlie")))
    write(tmp_path / ".hidden.yaml", manifest_yaml("hidden"))
    write(tmp_path / "notes.txt", "not a manifest")
    write(tmp_path / "sub" / "d.yaml", manifest_yaml("nested"))
    result = load_manifests([tmp_path])
    assert result.errors == []
    assert names(result) == ["alpha", "bravo", "charlie"]
    assert result.endpoints[2].source == f"{tmp_path / 'c.json'}#0"


def _manifest_dict(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "servegate.io/v1alpha1",
        "kind": "ServingEndpoint",
        "metadata": {"name": name},
        "spec": {
            "config": {
                "served_entities": [
                    {
                        "external_model": {
                            "name": "claude-3-5-haiku",
                            "provider": "anthropic",
                            "task": "llm/v1/chat",
                            "anthropic_config": {"anthropic_api_key": "{{secrets/s/k}}"},
                        }
                    }
                ]
            }
        },
        "status": {"ready": True},
    }


def test_configmap_mount_loads_each_endpoint_once(tmp_path: Path) -> None:
    mount = tmp_path / "endpoints"
    real = mount / "..2026_11_22_00_00_00.1"
    write(real / "chat.yaml", manifest_yaml("chat"))
    write(real / "embed.yaml", manifest_yaml("embed"))
    os.symlink("..2026_11_22_00_00_00.1", mount / "..data")
    for name in ("chat.yaml", "embed.yaml"):
        os.symlink(f"..data/{name}", mount / name)
    result = load_manifests([mount])
    assert result.errors == []
    assert names(result) == ["chat", "embed"]
    assert result.endpoints[0].source == f"{mount / 'chat.yaml'}#0"


def test_same_file_given_twice_loads_once(tmp_path: Path) -> None:
    path = write(tmp_path / "chat.yaml", manifest_yaml("chat"))
    result = load_manifests([tmp_path, path])
    assert result.errors == []
    assert names(result) == ["chat"]


def test_duplicate_names_across_files(tmp_path: Path) -> None:
    first = write(tmp_path / "a.yaml", manifest_yaml("chat"))
    second = write(tmp_path / "b.yaml", manifest_yaml("chat"))
    result = load_manifests([tmp_path])
    assert [e.source for e in result.endpoints] == [f"{first}#0"]
    [error] = result.errors
    assert (error.source, error.name, error.field) == (f"{second}#0", "chat", "metadata.name")
    assert f"duplicate endpoint name 'chat'; already defined in {first}#0" in error.message


def test_yaml_syntax_error_reports_file_and_line(tmp_path: Path) -> None:
    text = manifest_yaml("chat") + "---\nkind: ServingEndpoint\nmetadata: {name: x\nspec: [\n"
    path = write(tmp_path / "bad.yaml", text)
    result = load_manifests([path])
    assert result.endpoints == []
    [error] = result.errors
    assert error.source == str(path)
    assert error.message.startswith("invalid YAML at line ")
    line = int(error.message.split("at line ")[1].split(",")[0])
    assert line > len(manifest_yaml("chat").splitlines())
    assert str(error).startswith(f"{path}: invalid YAML at line {line}")


def test_json_syntax_error_reports_line(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.json", '{\n  "kind": "ServingEndpoint",\n  oops\n}\n')
    [error] = load_manifests([path]).errors
    assert error.message.startswith("invalid JSON at line 3")


def test_missing_path_is_reported(tmp_path: Path) -> None:
    result = load_manifests([tmp_path / "nope.yaml"])
    assert [str(e) for e in result.errors] == [
        f"{tmp_path / 'nope.yaml'}: no such file or directory"
    ]


@pytest.mark.parametrize(
    ("patch", "field", "phrase"),
    [
        ({"metadata": {"name": "bad name"}}, "metadata.name", "1 to 63 characters"),
        ({"metadata": {"name": "x" * 64}}, "metadata.name", "1 to 63 characters"),
        ({"metadata": {}}, "metadata.name", "Field required"),
        ({"apiVersion": "servegate.io/v1"}, "apiVersion", "'servegate.io/v1alpha1'"),
        ({"spec": None}, "spec", "expected a mapping"),
    ],
    ids=["name-chars", "name-too-long", "no-name", "wrong-version", "null-spec"],
)
def test_manifest_level_errors(
    tmp_path: Path, patch: dict[str, Any], field: str, phrase: str
) -> None:
    path = write(tmp_path / "m.json", json.dumps({**_manifest_dict("chat"), **patch}))
    result = load_manifests([path])
    assert result.endpoints == []
    assert [e.field for e in result.errors] == [field]
    assert phrase in result.errors[0].message


def test_metadata_round_trips_and_status_is_ignored() -> None:
    data = _manifest_dict("chat")
    data["metadata"].update(
        namespace="ml",
        uid="abc",
        generation=3,
        creationTimestamp="2026-11-22T00:00:00Z",
        labels={"team": "ml"},
        resourceVersion="42",
        managedFields=[{"manager": "kubectl"}],
    )
    manifest = ServingEndpointManifest.model_validate(data)
    assert manifest.metadata.generation == 3
    assert manifest.metadata.model_extra == {"managedFields": [{"manager": "kubectl"}]}
    assert "status" not in manifest.model_dump()


def test_unquoted_yaml_timestamp_is_accepted(tmp_path: Path) -> None:
    text = manifest_yaml("chat").replace(
        "  name: chat\n", "  name: chat\n  creationTimestamp: 2026-11-22T00:00:00Z\n"
    )
    result = load_manifests([write(tmp_path / "chat.yaml", text)])
    assert result.errors == []
    assert result.endpoints[0].manifest.metadata.creationTimestamp is not None


def test_validation_errors_prefix_and_format() -> None:
    assert format_loc(("spec", "config", "served_entities", 0, "name")) == (
        "spec.config.served_entities[0].name"
    )
    with pytest.raises(ValidationError) as info:
        ServingEndpointManifest.model_validate({**_manifest_dict("chat"), "kind": "Other"})
    assert [(i.field, i.message) for i in validation_errors(info.value, prefix="body")] == [
        ("body.kind", "Input should be 'ServingEndpoint'")
    ]
