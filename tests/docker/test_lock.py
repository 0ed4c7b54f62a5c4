"""requirements/runtime.txt and build.txt: the image's locked dependencies.

The Dockerfile installs them with `pip install --require-hashes`, so every entry must be an
exact `==` pin with at least one hash, and together they must cover what pyproject.toml asks
for. (Whether they resolve and install is checked by scripts/lock-requirements.sh, which
downloads every pinned wheel for x86_64 and aarch64: no network in the tests.)
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.docker.model import REPO

RUNTIME_LOCK = REPO / "requirements" / "runtime.txt"
BUILD_LOCK = REPO / "requirements" / "build.txt"
LOCK_SCRIPT = REPO / "scripts" / "lock-requirements.sh"
HASH = re.compile(r"^--hash=sha256:[0-9a-f]{64}$")


@dataclass(frozen=True)
class Pin:
    name: str  # canonical
    version: str
    hashes: tuple[str, ...]
    line: str


def read_lock(path: Path) -> dict[str, Pin]:
    """A pip-compile --generate-hashes file → its pins; anything else in it fails."""
    text = re.sub(r"\\\n", " ", path.read_text())  # join continuation lines
    pins: dict[str, Pin] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        spec, *options = line.split()
        assert not spec.startswith("-"), f"{path.name}: option line {line!r} (the lock is portable)"
        requirement = Requirement(spec)
        name = canonicalize_name(requirement.name)
        specifiers = list(requirement.specifier)
        assert len(specifiers) == 1 and specifiers[0].operator == "==", f"{spec}: pin with =="
        assert not requirement.extras, f"{spec}: extras are stripped (--strip-extras)"
        assert requirement.marker is None, f"{spec}: one lock for every platform, no markers"
        assert requirement.url is None, spec
        bad = [o for o in options if not HASH.match(o)]
        assert not bad, f"{spec}: unexpected {bad}"
        assert name not in pins, f"{name} pinned twice"
        pins[name] = Pin(name, specifiers[0].version, tuple(options), spec)
    return pins


@pytest.fixture(scope="module")
def pyproject() -> dict[str, object]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_every_entry_is_pinned_with_a_hash() -> None:
    for lock in (RUNTIME_LOCK, BUILD_LOCK):
        pins = read_lock(lock)
        assert pins, lock
        for pin in pins.values():
            assert pin.hashes, f"{lock.name}: {pin.line} has no --hash"


def test_the_runtime_lock_covers_every_runtime_dependency(pyproject: dict[str, object]) -> None:
    pins = read_lock(RUNTIME_LOCK)
    project = pyproject["project"]
    assert isinstance(project, dict)
    for dependency in project["dependencies"]:
        requirement = Requirement(dependency)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is not in {RUNTIME_LOCK.name}: run the script"
        version = pins[name].version
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{name}=={version} does not satisfy pyproject.toml's {requirement}: "
            "run scripts/lock-requirements.sh"
        )


def test_the_runtime_lock_has_no_test_or_lint_extras(pyproject: dict[str, object]) -> None:
    project = pyproject["project"]
    assert isinstance(project, dict)
    runtime = {canonicalize_name(Requirement(d).name) for d in project["dependencies"]}
    extras = {
        canonicalize_name(Requirement(d).name)
        for group in ("test", "lint")
        for d in project["optional-dependencies"][group]
    }
    pins = read_lock(RUNTIME_LOCK)
    leaked = (extras - runtime) & pins.keys()
    assert not leaked, f"test/lint packages in the image's lock: {sorted(leaked)}"
    assert canonicalize_name(project["name"]) not in pins, "servegate itself is built, not locked"


def test_the_build_lock_covers_the_build_system(pyproject: dict[str, object]) -> None:
    pins = read_lock(BUILD_LOCK)
    build_system = pyproject["build-system"]
    assert isinstance(build_system, dict)
    for dependency in build_system["requires"]:
        requirement = Requirement(dependency)
        pin = pins.get(canonicalize_name(requirement.name))
        assert pin, f"{requirement.name} is not in {BUILD_LOCK.name}"
        assert requirement.specifier.contains(pin.version, prereleases=True), requirement


def test_the_locks_say_how_to_regenerate_them() -> None:
    for lock in (RUNTIME_LOCK, BUILD_LOCK):
        head = lock.read_text().split("\n\n")[0].splitlines()[:12]
        assert any("scripts/lock-requirements.sh" in line for line in head), lock.name
    assert LOCK_SCRIPT.exists() and os.access(LOCK_SCRIPT, os.X_OK)
    script = LOCK_SCRIPT.read_text()
    for option in ("--generate-hashes", "--strip-extras", "pyproject.toml"):
        assert option in script
