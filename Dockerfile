# syntax=docker/dockerfile:1
# One image for the gateway (`gantry serve`), the supervisor (`gantry engine`) and the
# simulator (`gantry sim`). Build: docker build -t gantry .  (docs/deploy.md)
#
# BASE_IMAGE needs python3 >= 3.11 with venv; python:3.11-slim-bookworm by default, or a
# Debian bookworm root made with debootstrap (--include=python3,python3-venv,...).
# The `gpu` compose profile and Kubernetes overlay build FROM this image with vLLM added.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
ARG EXTRAS=postgres,otel,jwt,tokenizers,gpu,k8s
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
# A virtual environment under /opt/gantry is the only thing the runtime stage takes.
RUN python3 -m venv /opt/gantry \
    && /opt/gantry/bin/pip install --upgrade pip \
    && /opt/gantry/bin/pip install ".[${EXTRAS}]" \
    && /opt/gantry/bin/gantry --help > /dev/null

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="gantry" \
      org.opencontainers.image.description="A production serving stack for vLLM: gateway, supervisor, simulator" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/gantry /opt/gantry
# A fixed numeric user, so that Kubernetes' runAsNonRoot can check it without a name.
RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /var/lib/gantry \
        --shell /usr/sbin/nologin gantry \
    && mkdir -p /var/lib/gantry \
    && chown 10001:10001 /var/lib/gantry
# Read-only root filesystem: bytecode was compiled at install time, state goes to
# /var/lib/gantry (a volume: the SQLite keys/ledger database) and scratch to /tmp (tmpfs).
ENV PATH=/opt/gantry/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/var/lib/gantry \
    TMPDIR=/tmp \
    GANTRY_HOST=0.0.0.0 \
    GANTRY_SECURITY__DATABASE_URL=sqlite:////var/lib/gantry/gantry.db \
    HEALTHCHECK_URL=http://127.0.0.1:8080/health
WORKDIR /var/lib/gantry
VOLUME ["/var/lib/gantry"]
USER 10001:10001
EXPOSE 8080 8000
# Liveness of whichever process runs: set HEALTHCHECK_URL to its port (8000 for sim).
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['HEALTHCHECK_URL'], timeout=2)"]
ENTRYPOINT ["gantry"]
CMD ["serve"]
