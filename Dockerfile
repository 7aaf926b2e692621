# The gateway service. Orthanc runs in its own container (docker-compose.yml).
FROM python:3.11-slim-bookworm
# Every default detector's dependency: tesseract with its English language data (the `ocr`
# redaction detector), the fonts the demo draws with.
RUN apt-get update \
 && apt-get install -y --no-install-recommends tesseract-ocr tesseract-ocr-eng fonts-dejavu-core \
 && rm -rf /var/lib/apt/lists/*
# A fixed, non-root uid/gid (10001): the spool folder below is made and owned by it in the
# image, so a named volume mounted there starts owned by it too, and secrets files on the
# host can be given to it (chown 10001) before they are mounted.
ARG GATEWAY_UID=10001
RUN groupadd --system --gid ${GATEWAY_UID} gateway \
 && useradd --system --uid ${GATEWAY_UID} --gid ${GATEWAY_UID} --home-dir /var/lib/gateway --no-create-home \
    --shell /usr/sbin/nologin gateway \
 && mkdir -p /var/lib/gateway/spool \
 && chown -R ${GATEWAY_UID}:${GATEWAY_UID} /var/lib/gateway \
 && chmod 0700 /var/lib/gateway
WORKDIR /opt/gateway
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY plugins ./plugins
COPY models ./models
# The CPU build of torch (the transforms run their networks on the CPU; PyPI's default is CUDA, gigabytes).
RUN pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu . \
 && tesseract --list-langs | grep -qx eng \
 && python -c "from gateway.redaction import ocr; assert ocr.available(), 'no tesseract English data for tesserocr'"
USER ${GATEWAY_UID}:${GATEWAY_UID}
# torch's OpenMP threads sleep, not spin, while waiting (shared cores; see gateway/cli.py)
ENV OMP_WAIT_POLICY=PASSIVE
VOLUME ["/var/lib/gateway"]
# DICOM (modalities, workstations); the read-only status endpoint (/status, /metrics)
EXPOSE 11112 11180
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:11180/status', timeout=4)"]
ENTRYPOINT ["gateway"]
CMD ["serve", "--config", "/etc/gateway/gateway.yaml"]
