# Three stages:
#
# `module`: the module data path's C shim (extproc/module/extproc_module.c), compiled in the
# official Envoy image against that image's own C library, with the flags of
# extproc/module/build.py (tests/e2e/test_compose.py keeps them the same).
FROM envoyproxy/envoy:v1.40.0 AS module
COPY extproc/module/extproc_module.c /usr/local/src/extproc/
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && mkdir -p /usr/local/lib/extproc \
    && cc -std=c11 -fPIC -shared -pthread -Wall -Wextra -Werror -fvisibility=hidden -O2 \
        -o /usr/local/lib/extproc/libextproc_module.so /usr/local/src/extproc/extproc_module.c

# `--target envoy` (docker-compose.yml): the official Envoy image plus the shim.
FROM envoyproxy/envoy:v1.40.0 AS envoy
COPY --from=module /usr/local/lib/extproc/libextproc_module.so /usr/local/lib/extproc/
ENV ENVOY_DYNAMIC_MODULES_SEARCH_PATH=/usr/local/lib/extproc

# The default target: one image for every other service of docker-compose.yml that is ours,
# the ext_proc service (`extproc serve`, the default) and the regions' stand-ins (entrypoint
# `python -m extproc.sandbox stand-in`). It carries the shim too, in
# /usr/local/lib/extproc: on Kubernetes (deploy/kubernetes/) an init container copies it
# into a volume the pod's unmodified Envoy image loads it from.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The package from this checkout (.dockerignore lets in only what the build needs), without
# the `envoy` extra: Envoy runs from its own image.
COPY pyproject.toml README.md /src/
COPY extproc /src/extproc
RUN pip install /src && rm -rf /src
COPY --from=module /usr/local/lib/extproc/libextproc_module.so /usr/local/lib/extproc/

RUN groupadd --system --gid 10001 extproc \
    && useradd --system --uid 10001 --gid extproc --no-create-home --shell /usr/sbin/nologin extproc \
    && install -d -o 10001 -g 10001 -m 0750 /run/extproc
USER 10001:10001

# The admin view. gRPC (ext_proc, EDS, health) and the fast path's sync are Unix sockets in
# /run/extproc (EXTPROC_SOCKET_DIR), or TCP with a shared secret (`extproc serve --help`).
EXPOSE 9090

# Ready once the config is loaded and DNS has answered (/readyz on the admin port, read from
# EXTPROC_ADMIN as the service reads it). Python's standard library only: no curl in the image.
HEALTHCHECK --interval=2s --timeout=2s --start-period=10s --retries=15 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('EXTPROC_ADMIN', '127.0.0.1:9090').rpartition(':')[2]; urllib.request.urlopen(f'http://127.0.0.1:{port}/readyz', timeout=2)"]

ENTRYPOINT ["extproc"]
CMD ["serve"]
