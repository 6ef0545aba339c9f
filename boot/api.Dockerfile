# syntax=docker/dockerfile:1
# The API process: gunicorn with uvicorn workers, `tripq api`, on port 8182.
# Build from the repo root: docker build -f boot/api.Dockerfile -t tripq-api .
FROM python:3.11-slim-bookworm

# ARTIFACT_DIR and LOG_DIR are set because `pip install .` puts config.py in site-packages,
# where its repo-relative defaults would point; the image keeps its runtime files under /app/repo.
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    ARTIFACT_DIR=/app/repo/models \
    LOG_DIR=/app/repo/logs

WORKDIR /app

# Dependencies first, read from pyproject.toml alone, so a code change reuses this slow layer.
# The worker image runs the same line, so a shared builder cache builds it once for both.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# README.md is read by the build backend (pyproject's `readme`), so it is part of the code layer.
COPY README.md config.py ./
COPY apps/ apps/
COPY core/ core/
COPY tasks/ tasks/
COPY boot/ boot/
RUN pip install --no-cache-dir --no-deps . \
    && rm -rf build ./*.egg-info

# The API never loads a model, but it reads the serving model's card to report its version.
COPY repo/models/ repo/models/

# A fixed numeric id, so orchestrators that insist on non-root (runAsNonRoot) can verify it.
RUN groupadd --system --gid 10001 tripq \
    && useradd --system --uid 10001 --gid tripq --no-create-home --shell /usr/sbin/nologin tripq \
    && mkdir -p /app/repo/logs \
    && chown tripq:tripq /app/repo/logs
USER 10001:10001

EXPOSE 8182

# Liveness only (/health): /ready also needs Redis and a worker, and a container that
# restarts whenever Redis blinks would make an outage worse.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8182/health', timeout=2)"]

# gunicorn's worker count comes from API_WORKERS; SIGTERM makes gunicorn drain in-flight requests.
CMD ["tripq", "api", "--host", "0.0.0.0", "--port", "8182"]
