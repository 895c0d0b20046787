# The sensorcast image used by docker-compose.yml. PyPI's torch wheel for Linux carries CUDA, so the
# forecaster actors use the GPU that docker-compose reserves; they fall back to the CPU without one.
FROM python:3.11-slim
WORKDIR /app
RUN pip install --no-cache-dir torch==2.13.0
COPY pyproject.toml README.md ./
COPY stream stream
COPY training training
COPY serving serving
RUN pip install --no-cache-dir .
