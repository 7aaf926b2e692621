# The gateway service. Orthanc runs in its own container (docker-compose.yml).
FROM python:3.11-slim-bookworm
RUN useradd --system --home /var/lib/gateway gateway
WORKDIR /opt/gateway
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY plugins ./plugins
COPY models ./models
# The CPU build of torch (the transforms run their networks on the CPU; PyPI's default is CUDA, gigabytes).
RUN pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu .
USER gateway
# torch's OpenMP threads sleep, not spin, while waiting (shared cores; see gateway/cli.py)
ENV OMP_WAIT_POLICY=PASSIVE
VOLUME ["/var/lib/gateway"]
EXPOSE 11112
ENTRYPOINT ["gateway"]
CMD ["serve", "--config", "/etc/gateway/gateway.yaml"]
