# jobfit image: producer CLI + workers, built in two stages (the runtime stage has no build
# tools and no pip cache). The model is NOT baked in: it lives in a volume that the one-shot
# `model-init` service fills (`jobfit model provision`).
#
# Variants (build args):
#   CUDA (default): torch's default wheels, which bundle the CUDA runtime; run with the NVIDIA
#                   container toolkit (compose reserves a GPU for `worker-embed`).
#   CPU:            --build-arg TORCH_INDEX_URL=<a CPU-only torch wheel index> gives a much
#                   smaller image for `worker-embed-cpu`, `worker-train` on CPU, flower, migrate.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=""
RUN python -m venv /opt/jobfit
ENV PATH=/opt/jobfit/bin:$PATH
# torch first and pinned, then the worker's lock (the runtime only: no test or lint tools).
RUN pip install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==${TORCH_VERSION}"
COPY requirements/worker.lock /src/requirements/
RUN pip install -r /src/requirements/worker.lock
# jobfit/ links the three folders into the one import root; the wheel follows the links.
COPY pyproject.toml README.md /src/
COPY jobfit /src/jobfit
COPY shared /src/shared
COPY tasks /src/tasks
COPY workers /src/workers
RUN pip install --no-deps "/src[worker]"

FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/jobfit/bin:$PATH \
    HF_HUB_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false \
    JOBFIT_MODEL__STORE=/models
COPY --from=build /opt/jobfit /opt/jobfit
RUN useradd --create-home --uid 10001 jobfit \
 && mkdir -p /models /flower && chown jobfit /models /flower
USER jobfit
WORKDIR /home/jobfit
ENTRYPOINT ["jobfit"]
CMD ["--help"]
