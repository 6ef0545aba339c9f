# syntax=docker/dockerfile:1
# The worker process: one Celery worker with a gevent pool, `tripq worker`, on queue tasks.trip.
# Two variants from one file, chosen by the build argument EXTRAS:
#   docker build -f boot/worker.Dockerfile -t tripq-worker .                            # CPU
#   docker build --build-arg EXTRAS=gpu -f boot/worker.Dockerfile -t tripq-worker:gpu .  # GPU
# The GPU variant adds PyTorch with its CUDA libraries (several GB more) for the worker's GPU path
# (INFERENCE_DEVICE); the container runtime injects NVIDIA's driver. Build from the repo root.
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
# The API image runs the same line, so a shared builder cache builds it once for both.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# gcc builds a gbm's trees into a library (core.model.trees): at image build for the models shipped
# here, and in a running worker for a version promoted later. Without it workers still serve,
# on scikit-learn's slower evaluator. Unpinned: Debian's security updates replace pinned versions.
# After the dependency layer, which the API image shares.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install --yes --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
ENV TREE_CACHE_DIR=/app/repo/cache/trees

# EXTRAS: optional-dependencies of pyproject.toml to add, comma-separated; `gpu` makes the GPU
# variant (torch, whose Linux wheels on PyPI bring the CUDA runtime as pip packages).
# A layer of its own after the shared ones, so both variants reuse those and the CPU image
# (EXTRAS empty, the default) carries none of it. The project's dependencies are named again so
# that pip keeps them satisfied while it adds the extras; an unknown extra fails the build.
ARG EXTRAS=""
RUN if [ -n "$EXTRAS" ]; then \
        python -c "import os, tomllib; project = tomllib.load(open('pyproject.toml', 'rb'))['project']; extras = os.environ['EXTRAS'].replace(',', ' ').split(); print('\n'.join(project['dependencies'] + [r for e in extras for r in project['optional-dependencies'][e]]))" > /tmp/requirements.txt \
        && pip install --no-cache-dir -r /tmp/requirements.txt \
        && rm /tmp/requirements.txt; \
    fi

# README.md is read by the build backend (pyproject's `readme`), so it is part of the code layer.
COPY README.md config.py ./
COPY apps/ apps/
COPY core/ core/
COPY tasks/ tasks/
COPY boot/ boot/
RUN pip install --no-cache-dir --no-deps . \
    && rm -rf build ./*.egg-info

# The models ship inside the image and stay root-owned: the worker only reads them.
COPY repo/models/ repo/models/

# A fixed numeric id, so orchestrators that insist on non-root (runAsNonRoot) can verify it.
RUN groupadd --system --gid 10001 tripq \
    && useradd --system --uid 10001 --gid tripq --no-create-home --shell /usr/sbin/nologin tripq \
    && mkdir -p /app/repo/logs \
    && chown tripq:tripq /app/repo/logs
USER 10001:10001

# Compile the shipped gbm versions now, as the user that runs them (the cache is private to it),
# so a new container serves compiled trees at once instead of building them first (~40 s).
RUN tripq models compile

# Healthy while this container's worker keeps its heartbeat fresh in Redis. Celery names the
# worker after the container's hostname, which Docker also puts in $HOSTNAME; JSON form with
# an explicit shell because the variable must expand when the check runs.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["sh", "-c", "exec tripq workers --require-host \"$HOSTNAME\""]

# One process per container: scale with replicas (compose --scale), not with prefork children.
# Greenlets per process come from WORKER_CONCURRENCY. SIGTERM is Celery's warm shutdown.
CMD ["tripq", "worker", "--processes", "1"]
