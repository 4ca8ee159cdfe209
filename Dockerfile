# jacserve: the gRPC server that differentiates PyTorch programs.
#
#   docker build -t jacserve .                       # CPU torch (default)
#   podman build --format docker -t jacserve .       # podman/buildah: the Docker format
#                                                    # keeps HEALTHCHECK (OCI drops it)
#   docker build -t jacserve:cuda \
#       --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
#   docker run -p 50051:50051 -p 9464:9464 jacserve
#
# Configuration is JACSERVE_* environment variables (every `jacserve serve` flag has one).
# The CUDA build keeps the slim Python base: torch's CUDA wheels carry the CUDA libraries,
# and the NVIDIA container toolkit adds the driver. BASE_IMAGE picks another base that
# has Python 3.10+ (for example a CUDA image with Python installed).

ARG BASE_IMAGE=python:3.11-slim

# ---- build: a virtual environment with torch and jacserve ---------------------------
FROM ${BASE_IMAGE} AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# A folder holding the torch wheel to install instead of the index's (its dependencies still
# come from PyPI): builds where download.pytorch.org is out of reach.
ARG TORCH_WHEELS=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/jacserve
ENV PATH=/opt/jacserve/bin:$PATH
RUN if [ -n "$TORCH_WHEELS" ]; then \
        pip install --find-links "$TORCH_WHEELS" "torch==${TORCH_VERSION}"; \
    else \
        pip install --index-url "$TORCH_INDEX_URL" "torch==${TORCH_VERSION}"; \
    fi
WORKDIR /src
COPY pyproject.toml README.md ./
COPY deploy/constraints.txt ./
COPY client ./client
COPY server ./server
# Every dependency at the version deploy/constraints.txt pins (scripts/gen_constraints.py)
RUN pip install -c constraints.txt ".[server]" && python -c "import jacserve.server.app, jacserve.client"

# ---- runtime: the environment, a non-root user, nothing else ------------------------
FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="jacserve" \
      org.opencontainers.image.description="gRPC service for JVPs, VJPs, Jacobians and parameter gradients of PyTorch programs" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 jacserve \
    && useradd --system --uid 10001 --gid jacserve --home-dir /var/lib/jacserve \
       --create-home --shell /usr/sbin/nologin jacserve \
    && mkdir -p /var/lib/jacserve/models /var/lib/jacserve/scratch \
    && chown -R jacserve:jacserve /var/lib/jacserve
COPY --from=build /opt/jacserve /opt/jacserve
ENV PATH=/opt/jacserve/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    JACSERVE_HOST=0.0.0.0 \
    JACSERVE_PORT=50051 \
    JACSERVE_METRICS_PORT=9464 \
    JACSERVE_MODEL_DIR=/var/lib/jacserve/models \
    JACSERVE_LOG_FORMAT=json \
    TMPDIR=/var/lib/jacserve/scratch
USER 10001:10001
WORKDIR /var/lib/jacserve
VOLUME ["/var/lib/jacserve/models"]
EXPOSE 50051 9464
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["jacserve", "health", "--timeout", "4"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["jacserve", "serve"]
