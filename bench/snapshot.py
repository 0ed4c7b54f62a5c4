"""A frozen copy of servegate's source for one run.

Every servegate process of a run imports the copy taken at its start (through
``PYTHONPATH``, which comes before the editable install's finder), so that edits made to
the checkout while the run goes on never mix two versions into one set of ratios.
"""

from __future__ import annotations

import compileall
import io
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = "proxy/servegate"


class SnapshotFailed(RuntimeError):
    """The copy could not be made, or Python does not import it."""


def _git(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, timeout=60)


def describe(ref: str | None) -> str:
    """The commit the copy comes from, and whether uncommitted changes are in it."""
    commit = _git("rev-parse", "--short", ref or "HEAD").stdout.decode().strip() or "unknown"
    if ref is not None:
        return f"commit {commit} (`--servegate-ref {ref}`)"
    dirty = _git("status", "--porcelain", "--untracked-files=no", "--", PACKAGE).stdout.strip()
    return f"commit {commit}" + (" + uncommitted changes in proxy/servegate" if dirty else "")


def take(dest: Path, ref: str | None) -> dict[str, str]:
    """Copy servegate (the working tree, or ``ref`` from git) under ``dest``; return the
    environment for processes that must import the copy."""
    dest.mkdir(parents=True, exist_ok=True)
    if ref is None:
        ignore = shutil.ignore_patterns("__pycache__")
        shutil.copytree(REPO / PACKAGE, dest / "servegate", ignore=ignore)
    else:
        archive = _git("archive", "--format=tar", ref, PACKAGE)
        if archive.returncode != 0:
            raise SnapshotFailed(f"git archive {ref}: {archive.stderr.decode().strip()}")
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            for member in tar.getmembers():
                member.name = member.name.removeprefix("proxy/")
            tar.extractall(dest, filter="data")
    compileall.compile_dir(dest, quiet=1)  # so no gateway start pays for compiling it
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(dest), env.get("PYTHONPATH")]))
    probe = subprocess.run(
        [sys.executable, "-c", "import servegate; print(servegate.__file__)"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    if not probe.stdout.strip().startswith(str(dest)):
        raise SnapshotFailed(f"the copy is not what Python imports: {probe.stdout}{probe.stderr}")
    return env


def uses_uvloop(dest: Path, env: dict[str, str]) -> bool:
    """Whether the copied servegate runs on uvloop here (it names it, and it imports)."""
    names = any("uvloop" in path.read_text() for path in (dest / "servegate").rglob("*.py"))
    probe = [sys.executable, "-c", "import uvloop"]
    return names and subprocess.run(probe, capture_output=True, env=env, timeout=60).returncode == 0
