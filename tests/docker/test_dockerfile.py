"""The Dockerfile and .dockerignore, read with a parser instead of built (no Docker engine here).

What the image promises: a multi-stage build onto python:3.11-slim from the hash-locked
requirements; a final stage of the base image plus /opt/venv only (no compiler, pip cache or
test dependency); a numeric non-root user; a read-only root filesystem; `servegate` as the
entrypoint; and a build context holding every file the build copies and nothing else.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import PurePosixPath

import pytest

from servegate_operator.naming import ENDPOINTS_MOUNT, GATEWAY_PORT, SECRETS_MOUNT
from tests.docker.dockerignore import DockerIgnore, parse
from tests.docker.model import DOCKERIGNORE, REPO, Copy, Dockerfile, Stage, load

BASE_IMAGE = re.compile(r"^python:3\.11-slim(@sha256:[0-9a-f]{64})?$")
# What the builder may take from the context: the project's build inputs and the locks.
BUILD_INPUTS = {"pyproject.toml", "README.md", "proxy", "operator", "requirements"}
# Never in the final stage: compilers, build tools, package managers' installs, test tools.
FORBIDDEN_IN_FINAL = {
    "gcc",
    "g++",
    "cc",
    "clang",
    "make",
    "build-essential",
    "python3-dev",
    "libc6-dev",
    "pytest",
    "ruff",
    "mypy",
}
INSTALLERS = {"pip", "pip3", "uv", "apt", "apt-get", "dpkg", "easy_install"}


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return load()


@pytest.fixture(scope="module")
def dockerignore() -> DockerIgnore:
    return DockerIgnore.from_file(DOCKERIGNORE)


@pytest.fixture(scope="module")
def project() -> dict[str, object]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def context_copies(stage: Stage) -> list[Copy]:
    return [c for c in stage.copies() if "from" not in c.flags]


# ---------------------------------------------------------------------------- stages and base


def test_multi_stage_onto_python_311_slim(dockerfile: Dockerfile) -> None:
    assert len(dockerfile.stages) >= 2, "a builder stage and a final stage"
    for stage in dockerfile.stages:
        assert BASE_IMAGE.match(stage.image), f"line {stage.line}: FROM {stage.image}"
        assert stage.platform is None, "no pinned --platform: the image builds for amd64 and arm64"
    # The venv's python is a symlink into the base image: both stages must be the same image.
    assert len({stage.image for stage in dockerfile.stages}) == 1
    assert dockerfile.stages[0].name == "builder"


def test_final_stage_runs_as_a_numeric_non_root_user(dockerfile: Dockerfile) -> None:
    users = dockerfile.final.of("USER")
    assert users, "the final stage must set USER"
    user = users[-1].value.strip()
    assert re.fullmatch(r"\d+(:\d+)?", user), f"USER {user}: numeric, so runAsNonRoot can check it"
    assert all(int(part) != 0 for part in user.split(":")), f"USER {user} is root"
    # Nothing runs as root after it.
    after = dockerfile.final.instructions.index(users[-1])
    assert not [i for i in dockerfile.final.instructions[after:] if i.name == "RUN"]


def test_final_stage_takes_only_the_venv_from_the_builder(dockerfile: Dockerfile) -> None:
    builder_names = {stage.name for stage in dockerfile.stages[:-1]}
    copies = dockerfile.final.copies()
    assert copies, "the final stage copies the venv from the builder"
    for copy in copies:
        assert copy.instruction.name == "COPY", f"line {copy.instruction.line}: ADD"
        assert copy.flags.get("from") in builder_names, (
            f"line {copy.instruction.line}: the final stage copies from the builder only"
        )
        assert copy.sources == ["/opt/venv"] and copy.dest == "/opt/venv"


def test_final_stage_has_no_compiler_installer_or_test_tool(dockerfile: Dockerfile) -> None:
    for argv in dockerfile.final.run_commands():
        words = {PurePosixPath(word).name for word in argv}
        assert not words & FORBIDDEN_IN_FINAL, argv
        assert not words & INSTALLERS, f"{argv}: the final stage installs nothing"
        assert PurePosixPath(argv[0]).name not in {"python", "python3"}, argv


def test_no_test_or_dev_extras_anywhere(dockerfile: Dockerfile) -> None:
    for stage in dockerfile.stages:
        for argv in stage.run_commands():
            joined = " ".join(argv)
            assert not re.search(r"\[(test|lint|dev)[],]", joined), argv
            assert "-e" not in argv and "--editable" not in argv, argv


def test_no_add_and_no_healthcheck(dockerfile: Dockerfile) -> None:
    """COPY only (ADD fetches URLs and unpacks archives; nothing here needs that). Kubernetes
    ignores HEALTHCHECK: the pods' probes do that job (the header says so)."""
    for stage in dockerfile.stages:
        assert not stage.of("ADD")
        assert not stage.of("HEALTHCHECK")
    assert "HEALTHCHECK" in dockerfile.header


# -------------------------------------------------------------------------------- pip installs


def pip_commands(stage: Stage, verb: str) -> list[list[str]]:
    """`pip ... <verb> ...` commands, whatever runs pip (pip, /opt/build/bin/pip, python -m pip)."""
    found = []
    for argv in stage.run_commands():
        names = [PurePosixPath(word).name for word in argv]
        if verb not in argv:
            continue
        is_pip = names[0] in ("pip", "pip3") or (
            names[0].startswith("python") and argv[1:3] == ["-m", "pip"]
        )
        if is_pip:
            found.append(argv)
    return found


def test_requirements_install_with_hashes_and_wheels_only(dockerfile: Dockerfile) -> None:
    builder = dockerfile.stage("builder")
    installs = pip_commands(builder, "install")
    locked = [argv for argv in installs if "-r" in argv or "--requirement" in argv]
    files = {argv[argv.index("-r") + 1] for argv in locked if "-r" in argv}
    assert "requirements/runtime.txt" in files, "the runtime lock is what the venv gets"
    for argv in locked:
        assert "--require-hashes" in argv, argv
        assert "--only-binary=:all:" in argv, f"{argv}: no compiling in the build either"
    for argv in installs:
        if argv not in locked:
            assert "--no-deps" in argv, f"{argv}: everything else comes from the lock"
    for argv in pip_commands(builder, "wheel"):
        assert "--no-deps" in argv, argv


def test_the_runtime_lock_goes_into_opt_venv(dockerfile: Dockerfile) -> None:
    builder = dockerfile.stage("builder")
    runtime = [
        argv for argv in pip_commands(builder, "install") if "requirements/runtime.txt" in argv
    ]
    assert runtime
    for argv in runtime:
        assert "--python" in argv and argv[argv.index("--python") + 1].startswith("/opt/venv/")
    project_install = [
        argv
        for argv in pip_commands(builder, "install")
        if any(word.endswith(".whl") for word in argv)
    ]
    assert project_install, "servegate's own wheel is installed into /opt/venv"
    assert all("--no-deps" in argv for argv in project_install)


def test_bytecode_is_compiled_in_the_builder(dockerfile: Dockerfile) -> None:
    """So the read-only root filesystem never needs a .pyc write."""
    commands = dockerfile.stage("builder").run_commands()
    compileall = [argv for argv in commands if "compileall" in argv]
    assert compileall and any("/opt/venv" in word for word in compileall[0])


# ---------------------------------------------------------------------------- runtime settings


def test_runtime_environment(dockerfile: Dockerfile) -> None:
    envs = dockerfile.final.instructions[-1].envs
    assert envs["PATH"].startswith("/opt/venv/bin:")
    assert envs["PATH"].endswith(":/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin")
    assert envs["PYTHONDONTWRITEBYTECODE"] == "1"
    assert envs["PYTHONUNBUFFERED"] == "1"
    assert envs["HOME"] == "/tmp", "the only writable path with a read-only root filesystem"
    assert "PIP_NO_CACHE_DIR" not in envs, "builder settings stay in the builder"


def test_entrypoint_and_command(dockerfile: Dockerfile) -> None:
    entrypoints = dockerfile.final.of("ENTRYPOINT")
    assert entrypoints and entrypoints[-1].exec_form() == ["servegate"]
    commands = dockerfile.final.of("CMD")
    assert commands and commands[-1].exec_form() is not None, "CMD in exec form"


def test_exposes_the_gateway_port(dockerfile: Dockerfile) -> None:
    ports = {p.split("/")[0] for e in dockerfile.final.of("EXPOSE") for p in e.value.split()}
    assert str(GATEWAY_PORT) in ports


def test_oci_labels(dockerfile: Dockerfile, project: dict[str, object]) -> None:
    labels = dockerfile.final.instructions[-1].labels
    prefix = "org.opencontainers.image."
    for key in ("source", "title", "licenses", "version"):
        assert labels.get(prefix + key), f"missing LABEL {prefix}{key}"
    assert labels[prefix + "title"] == "servegate"
    assert labels[prefix + "licenses"] == project["license"]
    assert labels[prefix + "version"] == project["version"], "ARG VERSION's default"
    assert labels[prefix + "source"].startswith("https://")


def test_header_documents_size_target_and_entrypoints(dockerfile: Dockerfile) -> None:
    header = dockerfile.header
    assert re.search(r"[Ss]ize target:\s*<\s*\d+\s*MB", header), header
    # The two roles, with the paths the operator mounts into each gateway.
    gateway = f"servegate serve {ENDPOINTS_MOUNT} --secrets-dir {SECRETS_MOUNT} --host 0.0.0.0"
    assert gateway in header
    assert "servegate operator --all-namespaces" in header


# ------------------------------------------------------------------ build context and copies


def test_every_copied_path_exists_and_is_in_the_context(
    dockerfile: Dockerfile, dockerignore: DockerIgnore
) -> None:
    sources = [
        (copy, source)
        for stage in dockerfile.stages
        for copy in context_copies(stage)
        for source in copy.sources
    ]
    assert sources
    for copy, source in sources:
        where = f"line {copy.instruction.line}: COPY {source}"
        assert not any(ch in source for ch in "*?["), f"{where}: name the paths"
        path = REPO / source
        assert path.exists(), f"{where}: not in the repository"
        rel = path.relative_to(REPO).as_posix()
        assert not dockerignore.excluded(rel), f"{where}: .dockerignore leaves it out"
        assert rel.split("/")[0] in BUILD_INPUTS, f"{where}: the image needs only its build inputs"
        if path.is_dir():
            files = [p.relative_to(REPO).as_posix() for p in path.rglob("*") if p.is_file()]
            dropped = [f for f in files if dockerignore.excluded(f) and not is_cache(f)]
            assert not dropped, f"{where}: .dockerignore drops {dropped[:5]}"
            sent = [f for f in files if not dockerignore.excluded(f)]
            assert sent, f"{where}: nothing of it reaches the build"


def is_cache(path: str) -> bool:
    parts = path.split("/")
    return (
        "__pycache__" in parts
        or path.endswith((".pyc", ".pyo"))
        or any(p.endswith(".egg-info") for p in parts)
    )


def test_the_package_sources_all_reach_the_build(dockerignore: DockerIgnore) -> None:
    """Every module and py.typed of both import packages is in the context (the wheel is whole)."""
    for package in (REPO / "proxy" / "servegate", REPO / "operator" / "servegate_operator"):
        files = [p for p in package.rglob("*") if p.is_file() and p.suffix in (".py", ".typed")]
        assert files
        for file in files:
            assert not dockerignore.excluded(file.relative_to(REPO).as_posix()), file


@pytest.mark.parametrize(
    "path",
    [
        ".git/HEAD",
        ".venv/bin/python",
        "venv/bin/python",
        "tests/test_cli.py",
        "tests/docker/test_dockerfile.py",
        "bench/run.py",
        "servegate.egg-info/PKG-INFO",
        "proxy/servegate.egg-info/PKG-INFO",
        "proxy/servegate/__pycache__/cli.cpython-311.pyc",
        "operator/servegate_operator/__pycache__/main.cpython-311.pyc",
        "proxy/servegate/cli.pyc",
        ".mypy_cache/3.11/x.json",
        ".pytest_cache/v/cache/lastfailed",
        ".ruff_cache/CACHEDIR.TAG",
        "docs/_build/html/index.html",
        "build/lib/servegate/cli.py",
        "dist/servegate-0.1.0-py3-none-any.whl",
        ".coverage",
        "htmlcov/index.html",
        ".env",
        "helm/servegate/values.yaml",
        "deploy/operator/rbac.yaml",
        "examples/endpoints/chat.yaml",
        "scripts/lock-requirements.sh",
        ".ci/run",
    ],
)
def test_dockerignore_excludes(dockerignore: DockerIgnore, path: str) -> None:
    assert dockerignore.excluded(path)


def test_the_context_holds_only_build_inputs(dockerignore: DockerIgnore) -> None:
    """The real tree as Docker would send it: the build inputs plus Dockerfile/.dockerignore."""
    sent = dockerignore.context_files(REPO)
    tops = {path.split("/")[0] for path in sent}
    assert tops <= BUILD_INPUTS | {"Dockerfile", ".dockerignore"}, sorted(tops - BUILD_INPUTS)
    assert not [path for path in sent if is_cache(path)]
    assert "requirements/runtime.txt" in sent and "requirements/build.txt" in sent


# ------------------------------------------------------------- the .dockerignore matcher itself


@pytest.mark.parametrize(
    ("patterns", "path", "excluded"),
    [
        # Anchored at the root unless **/ says otherwise (git would match these anywhere).
        (["*.pyc"], "a.pyc", True),
        (["*.pyc"], "pkg/a.pyc", False),
        (["**/*.pyc"], "pkg/sub/a.pyc", True),
        (["**/*.pyc"], "a.pyc", True),
        (["build"], "pkg/build/x.py", False),
        # A leading / changes nothing; a folder pattern covers what is below it.
        (["/tests"], "tests/a/b.py", True),
        (["tests/"], "tests/a/b.py", True),
        (["docs/_build"], "docs/_build/html/index.html", True),
        (["docs/_build"], "docs/index.md", False),
        # * and ? stop at /; ** spans folders, none included.
        (["*/cache"], "a/cache/x", True),
        (["*/cache"], "a/b/cache/x", False),
        (["a/**/z"], "a/z", True),
        (["a/**/z"], "a/b/c/z", True),
        (["fil?.txt"], "file.txt", True),
        (["fil?.txt"], "fil/.txt", False),
        (["**"], "anything/at/all", True),
        (["*.py[cod]"], "x.pyo", True),
        (["*.py[cod]"], "x.py", False),
        # Later lines win; ! brings a path back.
        (["docs", "!docs/keep.md"], "docs/keep.md", False),
        (["docs", "!docs/keep.md"], "docs/drop.md", True),
        (["*.md", "!README*.md", "README-secret.md"], "README-secret.md", True),
        (["*.md", "!README*.md"], "README.md", False),
        # Comments and blank lines are not patterns.
        (["# tests", "", "   "], "tests/x", False),
    ],
)
def test_dockerignore_rules(patterns: list[str], path: str, excluded: bool) -> None:
    assert DockerIgnore(parse(patterns)).excluded(path) is excluded
