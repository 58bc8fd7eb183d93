# syntax=docker/dockerfile:1
# The cronorch image: one image for every process (`cronorch worker`, `cronorch tick`,
# `cronorch job-runner`, `cronorch spawn-sink`, `cronorch relay`, `cronorch migrate`,
# `cronorch topics ensure`); the Helm chart in deploy/helm/cronorch picks the command per
# Deployment.
#
# NOT BUILT IN CI: the development machines and CI have no container engine. What CI does check
# (tests/unit/test_deploy.py) is that this file agrees with the repository: the Python version
# with pyproject's requires-python, the uv pin with scripts/setup, the locked install
# (uv.lock, --frozen, no dev group), the packaged modules, a non-root user, the metrics port
# and the console script in ENTRYPOINT. Build it with:
#   docker build -t cronorch:0.1.0 .      (the tag the chart defaults to: Chart.yaml appVersion)

# --- build: resolve nothing, install exactly what uv.lock pins into /app/.venv ------------------
FROM python:3.11-slim AS build
RUN pip install --no-cache-dir --disable-pip-version-check "uv==0.13.9"
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /app
# Dependencies first (their layer survives code changes), then the project itself.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project --python /usr/local/bin/python3.11
COPY streams ./streams
COPY schemas ./schemas
RUN uv sync --frozen --no-dev --no-editable --python /usr/local/bin/python3.11

# --- runtime: the same base (the venv links to its interpreter), no uv, no build inputs --------
FROM python:3.11-slim AS runtime
RUN groupadd --system --gid 10001 cronorch \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin cronorch
COPY --from=build /app/.venv /app/.venv
# The default registry path of `cronorch jobs …` (deploy/jobs.yaml, relative to WORKDIR);
# the chart mounts its own registry and passes --registry.
COPY deploy/jobs.yaml /app/deploy/jobs.yaml
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /app
USER 10001:10001
# Settings.metrics_port (METRICS_PORT): Prometheus /metrics of every long-running process.
EXPOSE 9108
ENTRYPOINT ["cronorch"]
CMD ["--help"]
