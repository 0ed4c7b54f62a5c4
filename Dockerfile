# syntax=docker/dockerfile:1
#
# servegate: one image for both roles; the command picks the role.
#
#   Gateway:   servegate serve /etc/servegate/endpoints --secrets-dir /etc/servegate/secrets --host 0.0.0.0
#              (listens on 8080; the operator renders exactly this into each namespace's gateway
#              Deployment, with --auth-file or --insecure-no-auth)
#   Operator:  servegate operator --all-namespaces
#              (or --namespace NS ...; the Helm chart adds --peering/--standalone and
#              --liveness=http://0.0.0.0:8081/healthz)
#
#   docker run --rm -p 8080:8080 -v "$PWD/examples:/etc/servegate/endpoints:ro" \
#       IMAGE serve /etc/servegate/endpoints --host 0.0.0.0 --insecure-no-auth
#
# ENTRYPOINT is the `servegate` console script and the default CMD is --help, so
# `docker run IMAGE` prints the subcommands. Kubernetes sets `command:` (the chart:
# [servegate, operator, ...]; the operator's gateways: [servegate] + args [serve, ...]).
#
# Size target: < 350 MB uncompressed (linux/amd64). Measured: the /opt/venv this file builds
# from requirements/runtime.txt is ~190 MB with its precompiled bytecode (kubernetes ~85 MB,
# botocore ~30 MB, cryptography ~16 MB), on top of python:3.11-slim's ~130 MB: ~320 MB.
#
# Security: runs as UID/GID 10001 (numeric, so `runAsNonRoot` can verify it), and works with
# readOnlyRootFilesystem: bytecode is compiled at build time, PYTHONDONTWRITEBYTECODE stops any
# .pyc write, and HOME=/tmp is the only writable place it needs (mount an emptyDir there).
# The final stage has no compiler, no pip cache, no build tools and no test dependencies:
# only the base image plus /opt/venv (the locked runtime dependencies and servegate itself).
#
# Build (both architectures; every locked release has manylinux wheels for x86_64 and aarch64,
# so nothing is compiled):
#   docker buildx build --platform linux/amd64,linux/arm64 -t ghcr.io/servegate/servegate:0.1.0 .
# Dependencies come from requirements/runtime.txt (hash-locked; regenerate with
# scripts/lock-requirements.sh). The base is pinned by tag only: a digest could not be verified
# from where this file was written. To pin one, resolve it (`docker buildx imagetools inspect
# python:3.11-slim`) and write `python:3.11-slim@sha256:...` in BOTH FROM lines: the venv's
# interpreter symlink points into the base image, so the two stages must be the same image.
#
# No HEALTHCHECK: Kubernetes ignores it and uses the pods' probes instead (the gateway's
# /readyz and /healthz, the operator's kopf liveness endpoint), and the two roles would need
# different checks anyway.

############################ builder: resolve, build, compile ############################
FROM python:3.11-slim AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src

# The locked runtime dependencies, into a venv without pip (the base image's pip installs into
# it): the venv holds the lock and servegate, nothing else. --only-binary keeps compilers out of
# even this stage; if a future lock needs one, apt-get install it here, never in the final stage.
COPY requirements/runtime.txt requirements/build.txt requirements/
RUN python -m venv --without-pip /opt/venv \
    && pip --python /opt/venv/bin/python install --no-compile --require-hashes \
        --only-binary=:all: -r requirements/runtime.txt

# The project itself: built into a wheel by a separate, hash-locked build venv (setuptools stays
# out of /opt/venv), then installed without dependencies: they are all in the lock already.
# Then bytecode for everything, once, here: the final image never writes a .pyc (read-only root
# filesystem); unchecked-hash .pyc files stay valid whatever the files' timestamps become.
COPY pyproject.toml README.md ./
COPY proxy/ proxy/
COPY operator/ operator/
RUN python -m venv /opt/build \
    && /opt/build/bin/pip install --require-hashes --only-binary=:all: -r requirements/build.txt \
    && /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /tmp/dist . \
    && pip --python /opt/venv/bin/python install --no-compile --no-deps /tmp/dist/servegate-*.whl \
    && /opt/venv/bin/servegate --version \
    && /opt/venv/bin/python -m compileall -q -j 0 --invalidation-mode unchecked-hash /opt/venv/lib

############################ final: the base image + /opt/venv ############################
FROM python:3.11-slim AS runtime

ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="servegate" \
      org.opencontainers.image.description="Kubernetes-native gateway for external LLMs (Databricks serving-endpoint and OpenAI APIs) and its operator" \
      org.opencontainers.image.source="https://github.com/servegate/servegate" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"

# A named account for the numeric IDs, so tools that look the user up (getpwuid) find one.
# Its home is /tmp, the only writable path; --no-log-init keeps lastlog/faillog small.
RUN groupadd --gid 10001 servegate \
    && useradd --no-log-init --uid 10001 --gid 10001 --home-dir /tmp \
        --no-create-home --shell /usr/sbin/nologin servegate

COPY --from=builder /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp

USER 10001:10001

# The gateway's port. (The operator's kopf liveness endpoint, 8081 in the chart, is only
# probed by the kubelet and needs no EXPOSE.)
EXPOSE 8080

ENTRYPOINT ["servegate"]
CMD ["--help"]
