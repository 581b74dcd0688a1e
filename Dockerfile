# syntax=docker/dockerfile:1
#
# lms-changefeed: polls the Bindbee LMS API and publishes change events to Kafka.
#
#   docker build -t lms-changefeed .
#   docker run --rm -v changefeed-data:/data -v "$PWD/config:/etc/lms-changefeed:ro" \
#     -e CHANGEFEED_BINDBEE__API_KEY -e BINDBEE_TOKEN_ACME \
#     lms-changefeed run --config /etc/lms-changefeed/my.yaml
#
# tests/deploy/test_dockerfile.py replays the build stage's COPY and RUN steps in a fresh
# virtualenv, so keep them plain: COPY from the context into WORKDIR, RUN with
# "$VIRTUAL_ENV" rather than a literal path.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV VIRTUAL_ENV=/opt/lms-changefeed \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv "$VIRTUAL_ENV"
# Only what the daemon is built from: no tests, bench, dev tooling, and not the
# simulator (bindbee_sim/, the `sim` extra: FastAPI), which the daemon
# never imports; setuptools builds the distribution without it.
COPY pyproject.toml README.md ./
COPY daemon/ daemon/
# Non-editable and without extras: the runtime dependencies only. Console scripts
# cannot be tied to an extra, so pip still writes a bindbee-sim launcher for a
# package the image does not hold: removed rather than left to fail. Bytecode is
# compiled here, unchecked, because the running container cannot write it.
RUN "$VIRTUAL_ENV/bin/pip" install --no-cache-dir --no-compile . \
    && rm -f "$VIRTUAL_ENV/bin/bindbee-sim" \
    && "$VIRTUAL_ENV/bin/python" -m compileall -q --invalidation-mode unchecked-hash \
       "$VIRTUAL_ENV/lib"

FROM ${PYTHON_IMAGE}
ARG PYTHON_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="lms-changefeed" \
      org.opencontainers.image.description="Turns the Bindbee LMS API into a durable stream of change events on Kafka" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"

# A fixed uid/gid so volume ownership (fsGroup) and runAsUser can be set up front.
RUN groupadd --system --gid 10001 changefeed \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin changefeed \
    && mkdir -p /data /etc/lms-changefeed \
    && chown 10001:10001 /data

COPY --from=build /opt/lms-changefeed /opt/lms-changefeed

# The chart mounts the root filesystem read-only: state lives under /data only.
ENV PATH=/opt/lms-changefeed/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CHANGEFEED_STATE__PATH=/data/changefeed.db

USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
EXPOSE 9102

# Kubernetes ignores HEALTHCHECK (the chart sets probes); this is for docker/compose.
# The slim image has no curl: stdlib urllib, non-zero exit on a 503 or no answer.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('CHANGEFEED_HTTP__PORT', '9102'), timeout=4)"]

ENTRYPOINT ["lms-changefeed"]
CMD ["run"]
