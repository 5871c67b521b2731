# The cxrlab prediction service (serve.py) as a container image. README "Container" and
# docs/serving.md "Container" say how to build, run, mount or bake a checkpoint, and use a GPU.
#
#   docker build -t cxrlab-serve .
#   docker run --rm -p 8000:8000 -v "$PWD/best.ckpt:/models/model.ckpt:ro" cxrlab-serve
#
# To bake a checkpoint into the image instead, copy it to models/model.ckpt before building.
#
# Build arguments:
#   BASE_IMAGE       a Debian-based image with Python 3.11 and its venv module
#                    (default python:3.11-slim-bookworm; docker/base-image.sh makes one offline)
#   TORCH_INDEX_URL  where torch and torchvision come from; empty = PyPI's build (CUDA 13,
#                    runs on CPU and NVIDIA GPUs, about 5 GB more); for a CPU-only image:
#                    https://download.pytorch.org/whl/cpu
#   INDEX_URL, EXTRA_INDEX_URL, FIND_LINKS, CA_CERT
#                    pip's index-url, extra-index-url, find-links and cert for the install step
#                    (a mirror, a wheelhouse, a proxy's CA file); docker/build.sh passes the
#                    host's own

ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---- requirements: the pinned dependencies of the [serve] extra, listed from pyproject.toml --
# In a stage of its own, so the environment's layer below is keyed on that list alone: editing
# pyproject.toml elsewhere (another extra, a tool's settings) does not rebuild 6.7 GB.
FROM ${BASE_IMAGE} AS requirements
COPY pyproject.toml docker/requirements.py /src/
RUN cd /src && python3 requirements.py pyproject.toml serve > requirements.txt \
    && python3 requirements.py pyproject.toml --only torch torchvision > torch.txt

# ---- the image ---------------------------------------------------------------------------
# The environment is installed here, not copied from a build stage: every dependency is a wheel
# (no compiler or headers to leave behind), so a build stage would save nothing, and copying its
# 6.7 GB environment into this stage took over 4 minutes here (measured; docs/serving.md).
FROM ${BASE_IMAGE}
ARG TORCH_INDEX_URL=""
# pip's settings for the install step, passed on only when given
ARG INDEX_URL=""
ARG EXTRA_INDEX_URL=""
ARG FIND_LINKS=""
ARG CA_CERT=""
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/cxrlab cxrlab \
    && python3 -m venv /opt/cxrlab
ENV PATH=/opt/cxrlab/bin:$PATH
# the pinned dependencies: a change of the code or of pyproject.toml's other parts reuses this
# layer (gigabytes of wheels); pip's cache is not kept
COPY --from=requirements /src/requirements.txt /src/torch.txt /tmp/cxrlab-deps/
RUN set -eu; cd /tmp/cxrlab-deps; export PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1; \
    [ -z "$INDEX_URL" ] || export PIP_INDEX_URL="$INDEX_URL"; \
    [ -z "$EXTRA_INDEX_URL" ] || export PIP_EXTRA_INDEX_URL="$EXTRA_INDEX_URL"; \
    [ -z "$FIND_LINKS" ] || export PIP_FIND_LINKS="$FIND_LINKS"; \
    [ -z "$CA_CERT" ] || export PIP_CERT="$CA_CERT"; \
    if [ -n "$TORCH_INDEX_URL" ]; then \
        pip install --index-url "$TORCH_INDEX_URL" -r torch.txt; \
    fi; \
    pip install -r requirements.txt; \
    rm -rf /tmp/cxrlab-deps
# then cxrlab itself, not editable (no source tree stays behind), in small layers of their own
COPY pyproject.toml README.md /tmp/cxrlab/
COPY src /tmp/cxrlab/src
RUN PIP_NO_CACHE_DIR=1 pip install --quiet --no-deps --no-build-isolation /tmp/cxrlab \
    && rm -rf /tmp/cxrlab
COPY serve.py /app/serve.py
# a checkpoint baked in: models/model.ckpt in the build context, when there is one (the
# bracket makes it optional); otherwise mount one at /models/model.ckpt when running
COPY --chmod=0444 docker/models.txt models/model.ckp[t] /models/
# serve.py reads its settings from these (docs/serving.md has the table); a read-only root
# filesystem works: matplotlib's and torch's caches go to /tmp
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/cxrlab \
    MPLCONFIGDIR=/tmp/matplotlib \
    CXRLAB_CKPT=/models/model.ckpt \
    CXRLAB_HOST=0.0.0.0 \
    CXRLAB_PORT=8000 \
    CXRLAB_DEVICE="" \
    CXRLAB_THREADS="" \
    CXRLAB_WORKERS=1 \
    CXRLAB_MAX_UPLOAD_MB=20 \
    CXRLAB_MAX_BATCH=16
USER cxrlab
WORKDIR /app
EXPOSE 8000
# docker runs this; podman only with --format docker (OCI images have no health check)
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen(f\"http://127.0.0.1:{os.environ['CXRLAB_PORT']}/health\", timeout=4)"]
# exec form: python is PID 1 and uvicorn's handler turns SIGTERM (docker stop) into a clean
# shutdown; arguments after the image name go to serve.py (they override the environment)
ENTRYPOINT ["python", "/app/serve.py"]
