# The modeltel image: the collector (`modeltel collect`), and the example salary app and load
# generator of the full stack (docker-compose.yml), from one build of this repository.
#
#   docker build -t modeltel:0.1.0 .
#   docker run --rm -p 4317:4317 -p 4318:4318 -p 9464:9464 -v modeltel-data:/data modeltel:0.1.0
FROM python:3.12.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/modeltel

# The distribution with the collector extra, at the versions CI tests (constraints.txt).
COPY pyproject.toml README.md constraints.txt ./
COPY sdk ./sdk
COPY processors ./processors
RUN pip install --constraint constraints.txt ".[collector]"

# The example app and load generator run from the source tree (not part of the distribution).
COPY examples ./examples
ENV PYTHONPATH=/opt/modeltel

# The shipped configuration; docker-compose.yml mounts collector-config/modeltel.yaml over it.
COPY collector-config/modeltel.yaml /etc/modeltel/modeltel.yaml

# State (SQLite, checkpoint, audit log) in /data, owned by an unprivileged user: a named
# volume mounted there starts with this ownership.
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin modeltel \
    && mkdir -p /data \
    && chown modeltel:modeltel /data
USER modeltel

# OTLP/gRPC, OTLP/HTTP (and POST /v1/labels), Prometheus /metrics
EXPOSE 4317 4318 9464

HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=6 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9464/metrics', timeout=3)"]

ENTRYPOINT ["modeltel"]
CMD ["collect", "--config", "/etc/modeltel/modeltel.yaml", "--data-dir", "/data"]
