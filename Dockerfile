# syntax=docker/dockerfile:1
# Build stage: wheels for the dependencies (from pyproject.toml alone, so code changes do not
# rebuild them), then the service's own wheel.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > requirements.txt \
 && pip wheel --no-cache-dir --wheel-dir /wheels/deps -r requirements.txt
COPY README.md ./
COPY service ./service
COPY sql ./sql
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels/app .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOST=0.0.0.0 \
    PORT=8000 \
    LOG_FORMAT=json \
    DATABASE_URL=sqlite:////var/lib/service/service.db
RUN useradd --system --uid 10001 --home-dir /var/lib/service --create-home service
# Dependencies in a layer of their own: it changes only when pyproject.toml's dependencies do.
COPY --from=build /wheels/deps /wheels/deps
RUN pip install --no-cache-dir --no-index /wheels/deps/*.whl && rm -rf /wheels/deps
COPY --from=build /wheels/app /wheels/app
RUN pip install --no-cache-dir --no-index --no-deps /wheels/app/*.whl && rm -rf /wheels
USER service
WORKDIR /var/lib/service
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('PORT', '8000')}/health\", timeout=2)"]
CMD ["python", "-m", "service"]
