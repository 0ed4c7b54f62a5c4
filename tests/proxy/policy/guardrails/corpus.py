"""The labelled PII corpus and the scripts that write and score it, for the tests."""

from __future__ import annotations

import importlib.util
import json
import sys
from functools import cache
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[4]
CORPUS = Path(__file__).with_name("pii_corpus.jsonl")


@cache
def script(name: str) -> ModuleType:
    """A script of scripts/ (their names have dashes, so they are loaded by path)."""
    module_name = name.removesuffix(".py").replace("-", "_")
    spec = importlib.util.spec_from_file_location(module_name, REPO / "scripts" / name)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def load_corpus() -> list[tuple[str, list[tuple[str, str]]]]:
    records = [json.loads(line) for line in CORPUS.read_text(encoding="utf-8").splitlines()]
    return [(r["text"], [(e["type"], e["value"]) for e in r["entities"]]) for r in records]
