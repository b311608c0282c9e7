# syntax=docker/dockerfile:1
# Production image of Tickler: one image, three roles chosen by the command
#   tickler web      (default) hypercorn serving the Quart app on TICKLER_WEB_HOST:TICKLER_WEB_PORT
#   tickler worker   the Temporal worker
#   tickler migrate  alembic upgrade head, with the revisions of the installed `migrations` package
# Only the runtime dependencies are installed: no devstack extra (the embedded servers of `tickler run`),
# no test or lint extra. PostgreSQL, Redis and Temporal are separate services (see docker-compose.yml).

ARG PYTHON_IMAGE=python:3.11-slim

# ---- build: install the project into a virtualenv that the runtime stage copies as a whole ----
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN python -m venv /opt/venv

WORKDIR /src
# The runtime lock alone first, so that a change of the sources reuses this layer. Every package, the
# build backend (setuptools) included, is pinned and checked against its hash (`make lock` writes it).
COPY requirements/runtime.lock requirements/
RUN /opt/venv/bin/pip install --require-hashes -r requirements/runtime.lock
# .dockerignore keeps .venv, .data, .git, .env, caches and test artifacts out of the context.
COPY . .
# `pip install .`, not `.[devstack]` or `.[test]`: production talks to real servers. Its dependencies
# are already there (--no-deps) and the lock's setuptools builds it (--no-build-isolation).
RUN /opt/venv/bin/pip install --no-deps --no-build-isolation .

# ---- runtime: the interpreter, the virtualenv and nothing else (no compiler, no sources, no cache) ----
FROM ${PYTHON_IMAGE} AS runtime

# A fixed, unprivileged uid/gid, so volume permissions and Kubernetes runAsUser can rely on it.
RUN groupadd --system --gid 10001 tickler \
    && useradd --system --uid 10001 --gid tickler --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin tickler

ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Inside a container the server must listen on every interface, not the loopback default.
ENV TICKLER_WEB_HOST=0.0.0.0 \
    TICKLER_WEB_PORT=8000
# Anything but "dev" makes `tickler web` refuse the built-in development JWT secret, so an image run
# without TICKLER_JWT_SECRET fails loudly instead of accepting forgeable tokens.
ENV TICKLER_ENV=production

COPY --from=build /opt/venv /opt/venv

WORKDIR /app
# `tickler migrate` needs neither (it reads the installed package); these are for the plain alembic
# command run from here, e.g. `docker compose run --rm migrate alembic current` or `alembic downgrade`.
COPY alembic.ini ./
COPY migrations ./migrations

# Files stay owned by root: the app user can read them but not change them. Numeric, so Kubernetes
# runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001

EXPOSE 8000

# The default role's readiness (`tickler web`): 503 while PostgreSQL, Redis or Temporal does not answer,
# no answer while the event loop is blocked. Compose gives the worker (its /readyz on
# TICKLER_WORKER_HEALTH_PORT) and the one-shot migrate their own. python: the slim image has no curl.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('TICKLER_WEB_PORT', '8000') + '/readyz', timeout=3)"]

# No ENTRYPOINT, so `docker run IMAGE tickler worker` and compose `command: [tickler, worker]` read plainly.
CMD ["tickler", "web"]
