# The one sensorcast image: the Ray head, every Ray worker and the serving driver run it (and the
# simulator), so Ray, Python — to the patch version, Ray refuses a node whose Python differs — torch and
# sensorcast are the same on every node.
#
#   docker build -t sensorcast:cpu .                          # CPU torch (~200 MB of wheels)
#   docker build -t sensorcast:gpu --build-arg PLATFORM=gpu . # CUDA base image and CUDA torch
#
# RAY_VERSION is the `ray` pin in pyproject.toml (tests/test_config_compose.py holds them equal); the Python
# tag matches the interpreter the project is developed and tested on.
ARG RAY_VERSION=2.60.0
ARG PYTHON=py311
ARG PLATFORM=cpu
FROM rayproject/ray:${RAY_VERSION}-${PYTHON}-${PLATFORM}

ARG RAY_VERSION
ARG PLATFORM
ARG TORCH_VERSION=2.13.0
ENV PYTHONUNBUFFERED=1
# Arrow on the C library's malloc in every process of the image (Ray workers, training), as importing
# `serving` sets it for the driver: pyarrow's default (mimalloc) kept growing under the archive's writes.
ENV ARROW_DEFAULT_MEMORY_POOL=system

# torch first, from the index of the platform's build: PyPI's Linux wheel carries CUDA (it brings its own
# CUDA runtime and needs only the host's NVIDIA driver); the CPU build comes from PyTorch's own index.
RUN case "$PLATFORM" in \
      gpu) pip install --no-cache-dir "torch==${TORCH_VERSION}" ;; \
      cpu) pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu "torch==${TORCH_VERSION}" ;; \
      *) echo "PLATFORM must be cpu or gpu, not '$PLATFORM'" >&2; exit 1 ;; \
    esac

# The base image runs as the unprivileged user `ray`; pip builds in the source folder, so it is theirs.
RUN mkdir /home/ray/sensorcast
WORKDIR /home/ray/sensorcast
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users stream stream
COPY --chown=ray:users training training
COPY --chown=ray:users serving serving

# crc32c: without this C extension kafka-python's record CRC check is pure Python, too slow for the
# consumer, and stream/kafka_io.py turns the check off. The last line fails the build if pip replaced the
# base image's Ray (a node with another Ray version could not join the cluster).
RUN pip install --no-cache-dir crc32c . \
 && python -c "import crc32c, ray, torch, serving; assert ray.__version__ == '${RAY_VERSION}', ray.__version__"

CMD ["sensorcast", "--help"]
