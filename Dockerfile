# Build: docker build -t gateway .
# Run:   docker run -p 8080:8080 -v $PWD/config:/config:ro -v $PWD/models:/models:ro \
#          gateway serve --config /config/gateway.yaml --host 0.0.0.0
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    LITELLM_LOCAL_MODEL_COST_MAP=True MLFLOW_DISABLE_TELEMETRY=true VIRTUAL_ENV=/opt/gateway
WORKDIR /app

COPY requirements-bootstrap.lock requirements.lock ./
RUN python -m venv "$VIRTUAL_ENV" \
 && "$VIRTUAL_ENV/bin/pip" install --no-cache-dir --require-hashes -r requirements-bootstrap.lock \
 && "$VIRTUAL_ENV/bin/uv" pip sync --no-cache --compile-bytecode --python "$VIRTUAL_ENV/bin/python" --require-hashes requirements.lock

COPY pyproject.toml README.md ./
COPY gateway ./gateway
RUN "$VIRTUAL_ENV/bin/uv" pip install --no-cache --compile-bytecode --python "$VIRTUAL_ENV/bin/python" --no-deps . \
 && useradd --system --uid 10001 --no-create-home gateway

USER gateway
ENV PATH="$VIRTUAL_ENV/bin:$PATH"
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/live').status != 200)"
ENTRYPOINT ["gateway"]
CMD ["serve", "--config", "/config/gateway.yaml", "--host", "0.0.0.0", "--port", "8080"]
