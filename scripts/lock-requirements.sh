#!/usr/bin/env bash
# Regenerate the container image's locked requirement sets from pyproject.toml:
#
#   requirements/runtime.txt  [project.dependencies] and every transitive dependency,
#                             pinned with `==` and the sha256 of every file of that release
#   requirements/build.txt    [build-system.requires] (setuptools), to build the servegate
#                             wheel in the Dockerfile's builder stage, also hash-pinned
#
# Test and lint extras are not locked: they never enter the image.
#
# Usage:
#   scripts/lock-requirements.sh                           # keep the current pins; add/drop what changed
#   scripts/lock-requirements.sh --upgrade                 # newest versions pyproject.toml allows
#   scripts/lock-requirements.sh --upgrade-package aiohttp # just one package (and what it needs)
# Any argument is passed on to pip-compile.
#
# The lock is resolved for the image's interpreter, CPython 3.11 on Linux; it holds no
# environment markers, so it serves x86_64 and aarch64 alike. Afterwards every pinned release
# is downloaded as a wheel for both architectures (pip download --only-binary :all:
# --require-hashes), which proves that the image needs no compiler on either and that the
# hashes match; SKIP_PLATFORM_CHECK=1 skips that step.
#
# Environment:
#   PYTHON       a Python 3.11 (default python3.11). If it has pip-tools, that one is used;
#                otherwise pip-tools $PIP_TOOLS_VERSION and pip $PIP_VERSION go into a
#                throwaway venv (the pip version shapes the "# via" comments, so pin it).
#   INDEX_URL    the package index (default https://pypi.org/simple). The machine's own pip
#                configuration (extra indexes, find-links, constraints) is ignored, so that the
#                lock names only what a plain `pip install` from the index can fetch.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
PIP_TOOLS_VERSION=${PIP_TOOLS_VERSION:-7.6.2}
PIP_VERSION=${PIP_VERSION:-26.3}
INDEX_URL=${INDEX_URL:-https://pypi.org/simple}
# The glibc versions of the manylinux wheels accepted for the platform check: python:3.11-slim
# is Debian with glibc >= 2.36.
MANYLINUX_TAGS=(manylinux2014 manylinux_2_17 manylinux_2_24 manylinux_2_27 manylinux_2_28
    manylinux_2_31 manylinux_2_34 manylinux_2_35 manylinux_2_36)

export PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1
unset PIP_FIND_LINKS PIP_EXTRA_INDEX_URL PIP_INDEX_URL PIP_CONSTRAINT PIP_REQUIRE_VIRTUALENV
export CUSTOM_COMPILE_COMMAND="scripts/lock-requirements.sh"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

version=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
platform=$("$PYTHON" -c 'import sys; print(sys.platform)')
if [[ "$version" != 3.11 || "$platform" != linux ]]; then
    echo "lock-requirements: $PYTHON is Python $version on $platform; the image needs 3.11 on linux" >&2
    exit 1
fi

if "$PYTHON" -c 'import piptools' 2>/dev/null; then
    tool_python=$PYTHON
else
    echo "lock-requirements: installing pip-tools==$PIP_TOOLS_VERSION into a throwaway venv" >&2
    "$PYTHON" -m venv "$work/venv"
    "$work/venv/bin/python" -m pip install --quiet --index-url "$INDEX_URL" \
        "pip==$PIP_VERSION" "pip-tools==$PIP_TOOLS_VERSION"
    tool_python=$work/venv/bin/python
fi

compile() {
    "$tool_python" -m piptools compile --quiet --generate-hashes --strip-extras --allow-unsafe \
        --index-url "$INDEX_URL" --no-emit-index-url --no-emit-trusted-host \
        --newline LF "$@"
}

# Put our own explanation above pip-compile's header (pip-compile rewrites the whole file).
prepend_header() {
    local file=$1 what=$2
    {
        echo "# $what"
        echo "# Locked for CPython 3.11 on Linux x86_64 and aarch64; regenerate with:"
        echo "#     scripts/lock-requirements.sh            (add --upgrade for newer versions)"
        echo "# Do not edit by hand. Installed by the Dockerfile with pip --require-hashes."
        cat "$file"
    } >"$work/header.txt"
    mv "$work/header.txt" "$file"
}

mkdir -p requirements
compile --output-file requirements/runtime.txt "$@" pyproject.toml
prepend_header requirements/runtime.txt \
    "The image's runtime dependencies: [project.dependencies] of pyproject.toml, all pinned."
compile --build-deps-for wheel --only-build-deps --output-file requirements/build.txt "$@" \
    pyproject.toml
prepend_header requirements/build.txt \
    "What builds the servegate wheel in the image's builder stage: [build-system.requires]."

if [[ "${SKIP_PLATFORM_CHECK:-0}" != 1 ]]; then
    for arch in x86_64 aarch64; do
        platforms=()
        for tag in "${MANYLINUX_TAGS[@]}"; do platforms+=(--platform "${tag}_$arch"); done
        for lock in requirements/runtime.txt requirements/build.txt; do
            echo "lock-requirements: checking $lock has hash-matching wheels for $arch" >&2
            "$tool_python" -m pip download --quiet --no-deps --require-hashes \
                --only-binary=:all: --implementation cp --python-version 3.11 \
                "${platforms[@]}" --index-url "$INDEX_URL" \
                --dest "$work/wheels-$arch" -r "$lock"
        done
    done
fi
echo "lock-requirements: wrote requirements/runtime.txt and requirements/build.txt" >&2
