# The flow image: the project and its pinned dependencies. A Prefect worker (kubernetes, docker) starts it
# with its own command (`prefect flow-run execute`), so there is no entrypoint of ours.
#   docker build -t sftflow .                                                   # CPU torch (default)
#   docker build -t sftflow:cu128 --build-arg TORCH_VARIANT=cu128 .             # CUDA 12.8 torch
FROM python:3.12-slim

# cpu, or a CUDA tag the PyTorch index serves (cu126, cu128, ...). The index URL follows from it unless given.
ARG TORCH_VARIANT=cpu
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/${TORCH_VARIANT}

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    SFTFLOW_ROOT=/app

# gcc: DeepSpeed compiles its CPU comm op on first use (the Makefile warms it at setup).
RUN apt-get update && apt-get install -y --no-install-recommends gcc g++ git \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app

# torch first, before any project file is copied, so an edit does not reinstall it. Pinned and from the
# chosen index (the Makefile pins it too): a bare `torch` can resolve to a multi-GB CUDA build on the CPU
# image, or to a CPU build on the CUDA one.
RUN pip install --index-url ${TORCH_INDEX_URL} torch==2.13.0

COPY . .
RUN pip install -c constraints.txt -e ".[deepspeed,metrics]"
# Best effort, so a failed warm-up costs a minute at the first DeepSpeed run instead of failing the build.
RUN python -c "from deepspeed.accelerator import get_accelerator; \
get_accelerator().create_op_builder('ShareMemCommBuilder').load()" >/dev/null 2>&1 || true

# runs_dir defaults to ./runs: point it at the volume the kubernetes template mounts at /runs
# (deployments/k8s/base-job-template.json), so checkpoints outlive the pod.
# mkdir: without a volume (plain `docker run`) runs still land in the container.
RUN mkdir -p /runs && ln -s /runs /app/runs
