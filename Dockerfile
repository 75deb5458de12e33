# syntax=docker/dockerfile:1
# One image for every Parley process; the command picks which one runs:
#   python -m services.session.server | services.business.server | services.search.server
#   python -m services.gateway.main [--role web|worker|all]
#   python -m services.common.healthcheck --addr HOST:PORT [--service NAME]   (the probe)
# Multi-stage: wheels are built and installed in `build`; the final stage gets only the virtual
# environment, runs as an unprivileged user and writes nothing outside /tmp (read-only root
# filesystem friendly). The base is one ARG for both stages; for fully reproducible builds
# pin it by digest: python:3.11.14-slim-bookworm@sha256:<digest>.

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
# Compilers only here, for any dependency without a wheel for this platform.
RUN apt-get update \
 && apt-get install --yes --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/parley
ENV PATH=/opt/parley/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY parley ./parley
COPY services ./services
# A regular (not editable) install: the code lives in the venv's site-packages, nothing in /src
# is needed at run time. pip byte-compiles what it installs, as the read-only root filesystem
# needs later, and skips modules written for a newer Python (a dependency may ship one), on
# which `python -m compileall` would fail the build.
RUN pip install .

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="parley" \
      org.opencontainers.image.description="WhatsApp chatbot backend: gRPC services and a FastAPI gateway" \
      org.opencontainers.image.source="https://example.com/parley"
RUN groupadd --system --gid 10001 parley \
 && useradd --system --uid 10001 --gid parley --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin parley
COPY --from=build /opt/parley /opt/parley
# The commit /health/info reports: docker build --build-arg GIT_COMMIT=$(git rev-parse --short HEAD)
ARG GIT_COMMIT=unknown
ENV PATH=/opt/parley/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TMPDIR=/tmp \
    GIT_COMMIT=${GIT_COMMIT}
# Nothing is written here: the working directory only keeps relative paths off the root.
WORKDIR /app
USER 10001:10001
# gateway HTTP; session, business, search gRPC; their metrics ports.
EXPOSE 8000 50051 50052 50053 9101 9102 9103
# Each process handles SIGTERM itself: health goes NOT_SERVING, in-flight work finishes within
# SHUTDOWN_GRACE_SECONDS, then it exits 0. No shell in between, so the signal reaches Python.
STOPSIGNAL SIGTERM
CMD ["python", "-m", "services.gateway.main"]
