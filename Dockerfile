# One image for the API and the workers.
#   docker build --build-arg TORCH_FLAVOR=cpu .      (default: small CPU-only torch)
#   docker build --build-arg TORCH_FLAVOR=cu128 .    (CUDA build for GPU workers)
FROM python:3.11-slim

ARG TORCH_FLAVOR=cpu
ARG TORCH_VERSION=2.13.0

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTORCH_NVML_BASED_CUDA_CHECK=1 \
    NORMLAB_DATA_DIR=/var/lib/normlab/data \
    NORMLAB_ARTIFACTS_DIR=/var/lib/normlab/artifacts

WORKDIR /app
# torch first, from the index of the chosen flavor, so the project's range (torch>=2.6) is
# already satisfied and pip does not pull another build.
RUN pip install "torch==${TORCH_VERSION}" --index-url "https://download.pytorch.org/whl/${TORCH_FLAVOR}"
COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY worker ./worker
COPY migrations ./migrations
RUN pip install .

# Never run as root.
RUN useradd --system --uid 10001 --home-dir /var/lib/normlab normlab \
    && mkdir -p /var/lib/normlab/data /var/lib/normlab/artifacts \
    && chown -R normlab /var/lib/normlab
USER normlab

EXPOSE 8000
CMD ["normlab", "serve", "--host", "0.0.0.0", "--port", "8000"]
