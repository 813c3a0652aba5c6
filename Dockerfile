# syntax=docker/dockerfile:1
#
# One image for every vidmesh service: the container command picks the service,
#   docker run vidmesh run gateway      (compose: command, Kubernetes: args)
# Build:  docker build -t vidmesh:dev .
# For a fully reproducible build, pin the base image by digest:
#   docker build --build-arg PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:<digest> .

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG NODE_IMAGE=node:20-bookworm-slim

# ---- build: resolve and install into a self-contained virtualenv ------------------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/vidmesh
ENV PATH=/opt/vidmesh/bin:$PATH
WORKDIR /src

# Dependencies first, in their own layer: pyproject.toml names them, deploy/constraints.txt
# pins the exact versions (binary wheels only, so no compiler is needed or present).
COPY pyproject.toml ./
COPY deploy/constraints.txt deploy/constraints.txt
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
 && pip install --only-binary=:all: -r /tmp/requirements.txt -c deploy/constraints.txt

# Then the project itself (its dependencies are already there). README.md is optional.
COPY pyproject.toml README.md* ./
COPY services services
COPY shared shared
COPY media media
RUN pip install --no-deps . \
 && pip check \
 && pip uninstall --yes pip setuptools

# ---- web: the dashboard's HLS player (hls.js) and uploader (tus-js-client), from the npm
# registry (web/package-lock.json) --
FROM ${NODE_IMAGE} AS web
WORKDIR /web
COPY web/package.json web/package-lock.json ./
RUN npm ci --ignore-scripts --no-audit --no-fund

# ---- runtime: the virtualenv on a clean slim base, no build context, non-root --------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="vidmesh" \
      org.opencontainers.image.description="Video processing as a mesh of small Python services over NATS JetStream" \
      org.opencontainers.image.licenses="Apache-2.0"

RUN groupadd --system --gid 10001 vidmesh \
 && useradd --system --uid 10001 --gid vidmesh --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin vidmesh \
 && mkdir -p /scratch \
 && chown vidmesh:vidmesh /scratch

COPY --from=build /opt/vidmesh /opt/vidmesh
COPY --from=web /web/node_modules/hls.js/dist/hls.min.js /web/node_modules/hls.js/dist/hls.worker.js /opt/vidmesh/hls.js/
COPY --from=web /web/node_modules/tus-js-client/dist/tus.min.js /opt/vidmesh/tus-js-client/

ENV PATH=/opt/vidmesh/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VIDMESH_HTTP_HOST=0.0.0.0 \
    VIDMESH_HTTP_PORT=8080 \
    VIDMESH_TMP_DIR=/scratch \
    VIDMESH_HLSJS_DIR=/opt/vidmesh/hls.js \
    VIDMESH_TUSJS_DIR=/opt/vidmesh/tus-js-client

USER 10001:10001
WORKDIR /scratch
EXPOSE 8080

# Liveness only (/healthz): readiness (/readyz) is for orchestrators that route traffic.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('VIDMESH_HTTP_PORT', '8080'), timeout=4)"]

# `python -m services` is the vidmesh command; run as a module (not the console script) so
# the probe's fork server children do not re-import the CLI (multiprocessing re-runs a
# main *script* in every child, but never a package's __main__).
ENTRYPOINT ["python", "-m", "services"]
CMD ["--help"]
