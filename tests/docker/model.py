"""The Dockerfile as stages of instructions, read with dockerfile-parse (no Docker needed)."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from dockerfile_parse import DockerfileParser

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
# What python:3.11-slim sets, so that `ENV PATH=/opt/venv/bin:$PATH` resolves as in a build.
BASE_ENV = {"PATH": "/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin"}


@dataclass(frozen=True)
class Instruction:
    name: str  # upper case: RUN, COPY, ...
    value: str  # continuations joined, comment lines dropped
    line: int  # 1-based
    envs: dict[str, str]  # the environment after this instruction
    labels: dict[str, str]

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form ENTRYPOINT/CMD/RUN, else None."""
        try:
            value = json.loads(self.value)
        except json.JSONDecodeError:
            return None
        return value if isinstance(value, list) else None


@dataclass(frozen=True)
class Copy:
    flags: dict[str, str]  # --from=builder → {"from": "builder"}; --link → {"link": ""}
    sources: list[str]
    dest: str
    instruction: Instruction


@dataclass
class Stage:
    image: str
    name: str | None
    platform: str | None
    line: int
    instructions: list[Instruction] = field(default_factory=list)

    def of(self, name: str) -> list[Instruction]:
        return [i for i in self.instructions if i.name == name]

    def copies(self) -> list[Copy]:
        return [parse_copy(i) for i in self.instructions if i.name in ("COPY", "ADD")]

    def run_commands(self) -> list[list[str]]:
        """Every simple command of every RUN, as argv."""
        return [cmd for run in self.of("RUN") for cmd in split_commands(run.value)]


def parse_copy(instruction: Instruction) -> Copy:
    words = instruction.exec_form() or shlex.split(instruction.value)
    flags: dict[str, str] = {}
    while words and words[0].startswith("--"):
        key, _, value = words.pop(0)[2:].partition("=")
        flags[key] = value
    assert len(words) >= 2, f"line {instruction.line}: {instruction.name} needs a source and a dest"
    return Copy(flags, words[:-1], words[-1], instruction)


def split_commands(script: str) -> list[list[str]]:
    """A shell-form RUN → its simple commands (split at &&, ||, ;, |), each as argv."""
    lexer = shlex.shlex(script, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token and set(token) <= set(";&|"):
            commands.append([])
        else:
            commands[-1].append(token)
    return [c for c in commands if c]


def comment_header(text: str) -> str:
    """The comment block at the top of the file, without the '#' marks."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:].strip())
    return "\n".join(lines)


@dataclass
class Dockerfile:
    text: str
    stages: list[Stage]
    raw: list[dict[str, Any]]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(name)

    @property
    def header(self) -> str:
        return comment_header(self.text)


FROM_RE = re.compile(
    r"^(?:--platform=(?P<platform>\S+)\s+)?(?P<image>\S+)(?:\s+AS\s+(?P<name>\S+))?$", re.I
)


@cache
def load(path: Path = DOCKERFILE) -> Dockerfile:
    parser = DockerfileParser(path=str(path), parent_env=dict(BASE_ENV))
    stages: list[Stage] = []
    structure = parser.structure
    for item, context in zip(structure, parser.context_structure, strict=True):
        name = item["instruction"].upper()
        if name == "COMMENT":
            continue
        instruction = Instruction(
            name=name,
            value=item["value"],
            line=item["startline"] + 1,
            envs=dict(context.envs),
            labels=dict(context.labels),
        )
        if name == "FROM":
            match = FROM_RE.match(item["value"].strip())
            assert match, f"line {instruction.line}: cannot read FROM {item['value']!r}"
            stages.append(Stage(match["image"], match["name"], match["platform"], instruction.line))
        assert stages or name in ("ARG",), f"line {instruction.line}: {name} before FROM"
        if stages:
            stages[-1].instructions.append(instruction)
    return Dockerfile(path.read_text(), stages, structure)
