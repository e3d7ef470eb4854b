# The training image (README, "Run in a container"):
#   docker build -t mnist-cnn .
#   docker run --rm --gpus all --shm-size=1g -v ./data:/data -v ./logs:/app/logs mnist-cnn trainer.max_epochs=5
# Arguments after the image name are Hydra overrides; without --gpus the same command trains on the CPU.

# Base: the official PyTorch CUDA *runtime* image, pinned by its exact tag (never `latest`). Its torch is
# 2.14.1+cu130 (CUDA 13.0, cuDNN 9), the same build as the torch==2.14.1 wheel that constraints.txt pins and CI
# tests, with the same nvidia-* CUDA library wheels; Python is the image's Ubuntu 24.04 Python 3.12.
# To move torch, change this tag and the torch/nvidia-* lines of constraints.txt together
# (tests/test_container.py checks that they agree).
FROM pytorch/pytorch:2.14.1-cuda13.0-cudnn9-runtime

# PIP_BREAK_SYSTEM_PACKAGES: the base's Python is Ubuntu's system Python (PEP 668), and this single-purpose
# image installs into it, next to the base's torch.
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1 \
    MNIST_DATA_DIR=/data \
    MNIST_LOG_DIR=/app/logs \
    HOME=/home/app \
    LOGNAME=app

# The non-root user that runs everything. UID/GID 1000 (the first user on most Linux hosts) so bind-mounted
# ./logs and ./data are writable without --user; other hosts pass --user "$(id -u):$(id -g)" (or rebuild with
# --build-arg APP_UID=...). Ubuntu 24.04 ships a user `ubuntu` with UID 1000, which is removed first. HOME is
# world-writable (sticky, like /tmp) so caches and Jupyter's runtime files work under any --user UID, and
# LOGNAME (set above) names the user for tools that ask (getpass) when that UID has no /etc/passwd entry.
ARG APP_UID=1000
ARG APP_GID=1000
RUN if getent passwd ubuntu > /dev/null; then userdel --remove ubuntu; fi \
    && if getent group ubuntu > /dev/null; then groupdel ubuntu; fi \
    && groupadd --gid "${APP_GID}" app \
    && useradd --uid "${APP_UID}" --gid app --home-dir /home/app --create-home --shell /bin/bash app \
    && chmod 1777 /home/app \
    && mkdir -p /app/logs /data \
    && chown app:app /app/logs /data

WORKDIR /app

# Dependencies, in a layer of their own that only constraints.txt and pyproject.toml invalidate: a code change
# rebuilds in seconds. The package list is pyproject.toml's [project] dependencies plus the `notebook` extra
# (Jupyter Lab); every version comes from constraints.txt, the file README and CI install with. `-c`, not
# `-r constraints.txt`: -c only pins what the list pulls in, while -r would install everything in it (the dev
# tools, and the nvidia-* wheels a plain pip install of torch brings, which this base already has).
# torch is never reinstalled: the base's 2.14.1+cu130 satisfies torch==2.14.1, and the second constraint file,
# written from the base's own torch, makes pip fail loudly instead of pulling a second torch if constraints.txt
# and this tag ever disagree. `pip check` proves the result is consistent.
COPY constraints.txt pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['notebook']))" > /tmp/requirements.txt \
    && python -c "from importlib.metadata import version; print('torch==' + version('torch'))" > /tmp/base-torch.txt \
    && python -m pip install -r /tmp/requirements.txt -c constraints.txt -c /tmp/base-torch.txt \
    && python -m pip check \
    && rm /tmp/requirements.txt /tmp/base-torch.txt

# The project itself, without dependencies (all installed above). A regular (not editable) install: the wheel
# carries conf/, so `mnist-train` and the notebook's `import mnist_cnn` work from any directory.
COPY README.md train.py ./
COPY conf/ conf/
COPY mnist_cnn/ mnist_cnn/
COPY notebooks/ notebooks/
RUN python -m pip install --no-deps -c constraints.txt . \
    && python -m pip check

# Training writes runs under /app/logs and reads (or downloads) MNIST in /data: mount both as volumes.
USER ${APP_UID}:${APP_GID}
# Only the compose services listen: TensorBoard (6006) and Jupyter Lab (8888). Training opens no port.
EXPOSE 6006 8888
ENTRYPOINT ["python", "/app/train.py"]
CMD []
