# binaudit: one image for the worker, the migration one-shot and the model server.
#
#   docker build -t binaudit .
#       python:3.11-slim; PyPI's Linux x86_64 torch wheels carry their own CUDA libraries, so
#       this image already uses the GPU when run with `--gpus all` (NVIDIA Container Toolkit).
#   docker build --build-arg BASE=nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04 -t binaudit:cuda .
#       the CUDA variant on NVIDIA's base (Python 3.11 comes from Ubuntu's packages).
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu -t binaudit:cpu .
#       a small CPU-only image (migrations, CPU serving).
#
# The entry point is the `binaudit` console script: `docker run binaudit worker`,
# `docker run binaudit db upgrade`. With no arguments it serves the model on :8080, and
# SageMaker (bring your own container) runs it as `docker run <image> serve` -> `binaudit serve`.
ARG BASE=python:3.11-slim
FROM ${BASE}

ARG TORCH_INDEX_URL=""
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# NVIDIA's Ubuntu bases have no Python 3.11; python:3.11-slim already has it.
RUN if ! command -v python3.11 >/dev/null 2>&1; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
           python3.11 python3.11-venv ca-certificates \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3.11 -m venv /opt/venv \
    && pip install --upgrade pip

WORKDIR /app

# Dependencies first, from pyproject.toml alone, so a source change does not reinstall torch.
COPY pyproject.toml ./
RUN if [ -n "$TORCH_INDEX_URL" ]; then \
        pip install --index-url "$TORCH_INDEX_URL" "torch>=2.4" "torchvision>=0.19"; \
    fi \
    && python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['inference']))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY . .
RUN pip install --no-deps . \
    && useradd --system --uid 10001 --create-home binaudit

USER binaudit
# SageMaker unpacks the model artifact here and runs it without a database: the image runs
# that model (pinned). Deployments with the registry (compose) turn following on and give
# the database; the model here is then only a new deployment's first production version.
ENV BINAUDIT_INFERENCE__MODEL=/opt/ml/model \
    BINAUDIT_INFERENCE__FOLLOW_REGISTRY=false
# `binaudit serve` binds 127.0.0.1 by default; in a container it must listen on every
# interface (SageMaker and port publishing reach it from outside the container).
ENV BINAUDIT_SERVE__HOST=0.0.0.0
EXPOSE 8080 9108

ENTRYPOINT ["binaudit"]
CMD ["serve", "--port", "8080"]
