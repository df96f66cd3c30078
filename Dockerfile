# jitbot production image: `jitbot serve` as a non-root user.
# Build: docker build -t jitbot .   (needs a Docker engine; see docs/deploy.md)
FROM python:3.11.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY jitcore ./jitcore
COPY bot ./bot
COPY sandbox ./sandbox
RUN python -m venv /opt/jitbot \
 && /opt/jitbot/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/jitbot/bin/pip install --no-cache-dir .

FROM python:3.11.11-slim-bookworm
RUN groupadd --system --gid 10001 jitbot \
 && useradd --system --uid 10001 --gid jitbot --home-dir /app --shell /usr/sbin/nologin jitbot
COPY --from=build /opt/jitbot /opt/jitbot
WORKDIR /app
ENV PATH=/opt/jitbot/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    JITBOT_HOST=0.0.0.0 \
    JITBOT_PORT=3000 \
    JITBOT_POLICY_FILE=/app/policies.yaml
USER 10001:10001
EXPOSE 3000
HEALTHCHECK --interval=30s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:3000/healthz', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["jitbot"]
CMD ["serve"]
