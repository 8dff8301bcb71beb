# One image: the LiveKit worker by default; any agent.py command by argument, e.g.
#   docker run --env-file .env IMAGE start
#   docker run -v $PWD/call.wav:/call.wav IMAGE simulate --input /call.wav
#   docker run -p 8700:8700 -e SIDECAR_HOST=0.0.0.0 --env-file .env IMAGE sidecar
#   docker run --env-file .env -v $PWD/sip.yaml:/sip.yaml IMAGE provision-sip --config /sip.yaml
# requirements.lock pins linux/amd64 CPython 3.11 wheels by hash.

# The sidecar's /call page: livekit-client bundled with esbuild (package-lock.json pins both).
FROM node:20-bookworm-slim AS web
WORKDIR /web
COPY billing/web/package.json billing/web/package-lock.json ./
RUN npm ci --no-audit --no-fund --loglevel=error
COPY billing/web/src ./src
RUN npm run --silent build

FROM python:3.11-slim-bookworm

# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libportaudio2 libsndfile1 espeak-ng \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 10001 agent
WORKDIR /app

COPY requirements.lock requirements-diarization.lock ./
RUN pip install --no-cache-dir --require-hashes -r requirements.lock \
    && pip install --no-cache-dir --no-deps --require-hashes -r requirements-diarization.lock

COPY agent.py pyproject.toml sip.yaml ./
COPY agent ./agent
COPY plugins ./plugins
COPY billing ./billing
COPY storage ./storage
COPY --from=web /web/dist ./billing/web/dist

USER 10001
ENV PYTHONUNBUFFERED=1 DATA_DIR=/home/agent/data \
    DATABASE_URL=sqlite:////home/agent/data/voice_agent.db
# 8081: livekit's worker endpoint; 8700: the sidecar; 9100/9101: the worker's metrics and
# health when METRICS_PORT / HEALTH_PORT are set to them
EXPOSE 8081 8700 9100 9101
# SIGTERM drains the worker (DRAIN_TIMEOUT_S, default 600 s): give it that long to stop
STOPSIGNAL SIGTERM
ENTRYPOINT ["python", "agent.py"]
CMD ["start"]
