# returnsync worker and Klaviyo sandbox image (docker-compose.yml builds it for both).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# .dockerignore lets in only what the package needs: pyproject.toml, README.md, constraints.txt,
# streams/, agents/, klaviyo_sandbox/. The constraints pin every runtime package: rebuilds are reproducible.
WORKDIR /src
COPY . .
RUN pip install -c constraints.txt . && rm -rf /src/build

# RocksDB tables live under RETURNSYNC_DATA_DIR; compose mounts a named volume there, which
# takes this directory's owner, so the non-root user can write to it.
RUN useradd --system --uid 10001 --create-home --home-dir /home/returnsync returnsync \
    && mkdir -p /var/lib/returnsync \
    && chown returnsync /var/lib/returnsync
ENV RETURNSYNC_DATA_DIR=/var/lib/returnsync

USER returnsync
WORKDIR /home/returnsync
EXPOSE 6066 8080

ENTRYPOINT ["returnsync"]
CMD ["worker"]
