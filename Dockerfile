# The broker on a slim base, as a non-root user; config and data are volumes.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY broker ./broker
RUN pip install --no-cache-dir '.[redis]' \
    && useradd --system --uid 10001 --home /var/lib/broker broker \
    && mkdir -p /var/lib/broker /etc/broker \
    && chown broker /var/lib/broker
COPY routes /etc/broker/routes
COPY mappings /etc/broker/mappings
COPY docker/broker.yaml /etc/broker/broker.yaml

USER broker
VOLUME ["/var/lib/broker", "/etc/broker"]
EXPOSE 2575 11112 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=2).status == 200 else 1)"
ENTRYPOINT ["broker"]
CMD ["serve", "--config", "/etc/broker/broker.yaml"]
