# The gateway service. Orthanc runs in its own container (docker-compose.yml).
FROM python:3.11-slim-bookworm
RUN useradd --system --home /var/lib/gateway gateway
WORKDIR /opt/gateway
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY plugins ./plugins
COPY models ./models
RUN pip install --no-cache-dir .
USER gateway
VOLUME ["/var/lib/gateway"]
EXPOSE 11112
ENTRYPOINT ["gateway"]
CMD ["serve", "--config", "/etc/gateway/gateway.yaml"]
