# The generation API (`spritegen serve`) on CPU. The image holds the code only: the trained models and
# params.yaml come from the host project as read-only volumes (docker-compose.yml), so a retrain needs no
# rebuild, only a restart.
#
#   docker compose up --build -d                 # from a project folder with models/ and params.yaml
#   curl http://127.0.0.1:8000/api/v1/health
#
#   docker build -t spritegen:cpu .
#   docker run --rm -p 127.0.0.1:8000:8000 -v "$PWD/models:/project/models:ro" \
#       -v "$PWD/params.yaml:/project/params.yaml:ro" -e SPRITEGEN_API_KEY spritegen:cpu
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# torch and torchvision from PyTorch's CPU index first (the versions pyproject.toml pins): PyPI's wheels
# bring the CUDA libraries, gigabytes a CPU image never loads. `pip install .` then finds them installed.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.14.1 torchvision==0.29.1

# the package: only what it is built from (`evaluate` and `sweeps` install as spritegen.evaluate/.sweeps)
WORKDIR /src
COPY pyproject.toml README.md ./
COPY spritegen ./spritegen
COPY evaluate ./evaluate
COPY sweeps ./sweeps
RUN pip install . && cd / && rm -rf /src

# not root; /project is the server's working folder (models/ and params.yaml are mounted into it; the
# server may write its experiment cache, .spritegen/serve/, there)
RUN useradd --create-home --uid 1000 spritegen && mkdir /project && chown spritegen:spritegen /project
USER spritegen
WORKDIR /project

EXPOSE 8000
# the slim image has no curl: Python's urllib asks /api/v1/health (which needs no API key)
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/api/v1/health', timeout=4).status != 200)"]
# inside the container the server must listen on every interface to be reachable through the published
# port; set SPRITEGEN_API_KEY (passed through by docker-compose.yml) whenever the port is reachable by others
CMD ["spritegen", "serve", "--host", "0.0.0.0", "--allow-remote", "--port", "8000"]
