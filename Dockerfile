# The trainop image: the operator (`trainop operator`, the default command) and the
# metrics sidecar that the operator puts into every worker pod
# (`python -m trainop.exporter`, see operator/trainop/core/build.py).
#
#   docker build -t ghcr.io/trainop/trainop:0.1.0 .
#   docker build --build-arg PYTHON_IMAGE=python:3.12-slim-bookworm@sha256:... .
#
# A pinned slim base; override it (e.g. with a digest) from the build command.
ARG PYTHON_IMAGE=python:3.12-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
# Only what `pip install .` reads: tests, charts and docs stay out of the layer cache key.
COPY pyproject.toml README.md ./
COPY operator/ operator/
COPY trainer-image/ trainer-image/
# The gpu extra brings nvidia-ml-py, so the sidecar reads real GPUs; the
# dependencies are pinned by pyproject.toml's ranges, the packages themselves are local.
# trainop-runtime comes without its train extra: the operator reads only its contract,
# and torch has no business here (the runtime ships no console script to break).
# hadolint ignore=DL3013
RUN python -m pip install --no-cache-dir --prefix=/install ./trainer-image ".[gpu]"

FROM ${PYTHON_IMAGE}
# Bytecode is compiled at install time; the root filesystem is read-only at run time.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /install /usr/local
# A passwd entry for the uid it runs as: Kopf (and getpass) look the user up by uid,
# and a uid with no name crashes Kopf's start (getpwuid(): uid not found).
RUN groupadd --gid 65532 trainop \
 && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin trainop
# 65532 is the uid the chart and the sidecar's securityContext run as
# (runAsNonRoot needs a numeric USER to verify it).
USER 65532:65532
ENTRYPOINT ["trainop"]
CMD ["operator"]
