# jobfit image: producer CLI + workers. The model is NOT baked in: it lives in a volume that
# the one-shot `model-init` service fills (`jobfit model provision`).
FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false \
    JOBFIT_MODEL__STORE=/models
WORKDIR /app

# torch first and pinned; point TORCH_INDEX_URL at a CPU-only wheel index for a small CPU
# image, or leave it empty for the default (CUDA) build on GPU hosts.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=""
RUN pip install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==${TORCH_VERSION}"
COPY requirements.lock ./
RUN pip install -r requirements.lock

COPY pyproject.toml README.md ./
COPY shared ./shared
COPY tasks ./tasks
COPY workers ./workers
RUN pip install --no-deps . \
 && useradd --create-home --uid 10001 jobfit \
 && mkdir -p /models && chown jobfit /models
USER jobfit
ENTRYPOINT ["jobfit"]
CMD ["--help"]
