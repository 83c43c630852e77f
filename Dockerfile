# syntax=docker/dockerfile:1
# goodshunter-scheduler image: the daemon (default command) and, from the same image, the fake crawler
# (`--entrypoint goodshunter-crawler-stub`) for local runs. Build from the repository root:
#   docker build -t goodshunter-scheduler:0.1.0 .
# docs/DEPLOY.md explains the run-time settings; nothing secret is baked in.

ARG PYTHON_VERSION=3.12

# ---- builder: a self-contained virtualenv at /opt/venv ----
FROM python:${PYTHON_VERSION}-slim-bookworm AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore

# Every dependency ships manylinux wheels, so no compiler is needed here; the venv path is the same in
# both stages because a venv is not relocatable.
RUN python -m venv /opt/venv

WORKDIR /src
# Only what the wheel is built from: a change to tests or docs does not invalidate this layer.
COPY pyproject.toml README.md ./
COPY scheduler/ scheduler/
COPY crawler_stub/ crawler_stub/
# Not editable, so the final stage needs no source tree; pip compiles the bytecode now, because the
# root file system is read-only at run time.
RUN /opt/venv/bin/pip install --no-cache-dir .

# ---- runtime: slim Python, the venv, a fixed non-root uid ----
FROM python:${PYTHON_VERSION}-slim-bookworm

ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="goodshunter-scheduler" \
      org.opencontainers.image.description="GoodsHunter task scheduler: Redis Streams consumer driving the crawler over gRPC" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="MIT"

# A fixed uid/gid (not the next free one) so Kubernetes runAsUser, volume ownership and host audit logs
# agree with the image; numeric USER lets runAsNonRoot verify it without reading /etc/passwd.
RUN groupadd --system --gid 10001 goodshunter \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin goodshunter

COPY --from=builder /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    APP_LOG_FORMAT=json

# `run` reads configs/config.json relative to here when it exists: mount a config at
# /app/configs/config.json, or set everything through environment variables.
WORKDIR /app
USER 10001:10001

EXPOSE 9090

# The daemon refreshes its heartbeat in Redis; `check` fails when Redis is unreachable or the heartbeat
# of this container's consumer (APP_CONSUMER_NAME, default the hostname; with APP_PROCESSES=N, of each
# of its N daemons) is stale. The start period covers connecting and creating the consumer group.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["goodshunter-scheduler", "check"]

# Exec form, no shell and no init: the daemon is PID 1 and receives SIGTERM itself. It installs its own
# SIGTERM/SIGINT handlers (the kernel's PID 1 exemption only drops signals with default handlers) and
# `run` leaves nothing to reap: with APP_PROCESSES > 1 it is the supervisor of its daemons, sends the
# signal on and waits for each. `docker run --init` adds tini if a subcommand that spawns children
# (demo) is ever run as PID 1.
STOPSIGNAL SIGTERM
ENTRYPOINT ["goodshunter-scheduler"]
CMD ["run"]
