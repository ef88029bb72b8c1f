# MorphoBIDS: structural-MRI BIDS App.
#
#   docker build -t morphobids .
#   docker run --rm --read-only --tmpfs /tmp -v /data:/data:ro -v /out:/out \
#       morphobids /data /out participant --participant_label 01
#
# Build arguments (production defaults; see docs/containers.md):
#   BASE               base image with (or without) Python 3.11. A Debian bookworm root
#                      file system without Python (e.g. debootstrap --variant=minbase +
#                      `podman import`) works too: Python then comes from Debian.
#   TORCH_VERSION      torch version, installed first (deepbet needs it).
#   TORCH_INDEX_URL    where torch comes from: PyTorch's CPU wheel index keeps the image
#                      small. Empty = the default index (PyPI: a CUDA build, several GB).
#   PIP_FIND_LINKS     extra folder of wheels for pip (e.g. a build-time mount holding a CPU
#                      torch wheel when PyTorch's index cannot be reached). Empty = none.
#   PIP_CERT           CA bundle for pip behind a TLS-intercepting proxy (a build-time
#                      mount). Empty = the bundle pip ships.
#   FETCH_TEMPLATEFLOW 1 = download the TemplateFlow templates now, into TEMPLATEFLOW_HOME.
#                      0 = no download (offline builds); the app then uses its embedded
#                      templates, built by `python -m bids_app.resources build`.
#   VERSION, VCS_REF, BUILD_DATE  image labels.

ARG BASE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------
# builder: the virtual environment, the embedded resources and the TemplateFlow templates
# ---------------------------------------------------------------------------------------
FROM ${BASE} AS builder

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Python 3.11 from Debian when the base image has none (a bare bookworm root file system).
# hadolint ignore=DL3008
RUN if ! command -v python3 >/dev/null 2>&1; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
            ca-certificates python3 python3-venv \
        && rm -rf /var/lib/apt/lists/*; \
    fi

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DEFAULT_TIMEOUT=120
RUN python3 -m venv "$VIRTUAL_ENV"

# torch FIRST, CPU build: installed later as a dependency it would be the CUDA build.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG PIP_FIND_LINKS=
ARG PIP_CERT=
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL:-https://pypi.org/simple}" \
        "torch==${TORCH_VERSION}" \
    && python -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda)"

# The pinned environment, exactly as the Makefile installs it; then the embedded offline
# resources. Test suites and C++ headers are dropped (~0.5 GB): nothing imports them.
WORKDIR /src
COPY pyproject.toml constraints.txt README.md* LICENSE* ./
COPY requirements/ requirements/
COPY bids_app/ bids_app/
RUN pip install --no-cache-dir -c constraints.txt . \
    && pip install --no-cache-dir --no-deps -r requirements/nodeps.txt \
    && python -c "import torch; assert torch.__version__.startswith('${TORCH_VERSION}'), torch.__version__" \
    && python -m bids_app.resources build \
    && SITE="$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
    && rm -rf "$SITE/torch/include" "$SITE/torch/test" \
    && find "$SITE" -type d -name tests -prune -exec rm -rf {} + \
    && rm -rf /src/build

# TemplateFlow templates, fetched at build time (the app never downloads at run time).
ENV TEMPLATEFLOW_HOME=/opt/templateflow
ARG FETCH_TEMPLATEFLOW=1
RUN if [ "$FETCH_TEMPLATEFLOW" = "1" ]; then \
        python -c "from templateflow import api; \
q = [dict(desc=None, suffix='T1w'), dict(desc='brain', suffix='T1w'), dict(desc='brain', suffix='mask')] \
  + [dict(label=t, suffix='probseg') for t in ('GM', 'WM', 'CSF')]; \
got = [api.get('MNI152NLin2009cAsym', resolution=r, extension='.nii.gz', **k) for r in (1, 2) for k in q]; \
bad = [k for k, p in zip(q * 2, got) if not p or isinstance(p, list)]; \
assert not bad, f'TemplateFlow: not exactly one file for {bad}'; \
print(*got, sep='\n')"; \
    else \
        python -c "import templateflow.conf"; \
    fi \
    && chmod -R a-w,a+rX "$TEMPLATEFLOW_HOME"

# ---------------------------------------------------------------------------------------
# runtime image
# ---------------------------------------------------------------------------------------
FROM ${BASE}

ARG VERSION=unknown
ARG VCS_REF=unknown
ARG BUILD_DATE=unknown
ARG BASE
LABEL org.opencontainers.image.title="MorphoBIDS" \
      org.opencontainers.image.description="Structural MRI BIDS App: preprocessing, morphometry, quality control and group statistics" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.created="${BUILD_DATE}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${BASE}"

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Same Python as the builder (the virtual environment links to it); no build tools.
# hadolint ignore=DL3008
RUN if ! command -v python3 >/dev/null 2>&1; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
            ca-certificates python3 \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && groupadd --gid 10001 morphobids \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp/home \
        --shell /usr/sbin/nologin morphobids

COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /opt/templateflow /opt/templateflow

# Read-only at run time: the software and templates belong to root; everything the app or
# its libraries write goes to /tmp (a tmpfs with `docker run --read-only --tmpfs /tmp`;
# Singularity binds the host's /tmp) or to the output and work folders.
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    TEMPLATEFLOW_HOME=/opt/templateflow \
    TEMPLATEFLOW_AUTOUPDATE=0 \
    HOME=/tmp/home \
    XDG_CACHE_HOME=/tmp/home/.cache \
    XDG_CONFIG_HOME=/tmp/home/.config \
    MPLCONFIGDIR=/tmp/home/.config/matplotlib \
    MPLBACKEND=Agg \
    DENO_DIR=/tmp/home/.cache/deno \
    NIPYPE_NO_ET=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONNOUSERSITE=1 \
    PYTHONUNBUFFERED=1 \
    LC_ALL=C.UTF-8 \
    LANG=C.UTF-8 \
    MORPHOBIDS_CONTAINER_TYPE=docker \
    NUMBA_CACHE_DIR=/tmp/numba-cache \
    MORPHOBIDS_CONTAINER_IMAGE="morphobids/morphobids:${VERSION}"

# Fail the build, not the first run, if a library cannot load in this base.
RUN python -c "import torch, ants, deepbet, nibabel, nilearn.image, nipype, bids, templateflow.api, \
statsmodels.api, sklearn, pandas, matplotlib.pyplot, mriqc.qc.anatomical, numba, bids_app.cli, bids_app.group.permutation" \
    && morphobids --version \
    && bids-validator-deno --version \
    && rm -rf /tmp/home

USER 10001:10001
WORKDIR /tmp
ENTRYPOINT ["/opt/venv/bin/morphobids"]
CMD ["--help"]
