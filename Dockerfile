# syntax=docker/dockerfile:1
# The service's image: a virtual environment with the service and what it needs to serve, on a
# slim Python base, run as an unprivileged user. Two stages, so nothing that only builds it (pip,
# setuptools, the build's caches and sources) reaches the image, and no layer holds files a later
# one deletes.
#
# BASE_IMAGE: any image with python3 (3.11 or newer) and its venv module - the official slim image
# by default; this repository's tests build on a stand-in made from Debian's own packages (see
# README, Container).
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
RUN python3 -m venv /opt/service
# Dependencies first, from pyproject.toml alone: a code change does not reinstall them.
COPY pyproject.toml ./
RUN python3 -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > requirements.txt \
 && /opt/service/bin/pip install -r requirements.txt
COPY README.md ./
COPY service ./service
COPY sql ./sql
# The service itself; then out with what serving never uses: pip and setuptools.
RUN /opt/service/bin/pip install --no-deps . \
 && /opt/service/bin/pip uninstall --yes pip setuptools

FROM ${BASE_IMAGE}
ENV PATH=/opt/service/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/var/lib/service \
    HOST=0.0.0.0 \
    PORT=8000 \
    LOG_FORMAT=json \
    DATABASE_URL=sqlite:////var/lib/service/service.db
# An unprivileged user (written into passwd directly: a minimal base may have no useradd, and
# libpq and asyncpg look the user up when a URL names none); its home is the one place it writes
# (SQLite's file and the generated signing key): mount a volume there, run with a read-only root.
RUN echo "service:x:10001:10001:purchase-feed-service:/var/lib/service:/usr/sbin/nologin" >> /etc/passwd \
 && echo "service:x:10001:" >> /etc/group \
 && install -d -o 10001 -g 10001 -m 0700 /var/lib/service
COPY --from=build /opt/service /opt/service
USER 10001:10001
WORKDIR /var/lib/service
VOLUME /var/lib/service
EXPOSE 8000
# /health touches no database: "healthy" means the process serves; /ready is for load balancers.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('PORT', '8000')}/health\", timeout=2)"]
# SIGTERM drains (SHUTDOWN_GRACE_SECONDS, 5 s by default): keep the engine's stop timeout above it.
ENTRYPOINT ["python", "-m", "service"]
CMD ["serve"]
