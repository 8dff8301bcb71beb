# One image: the LiveKit worker by default; any agent.py command by argument, e.g.
#   docker run --env-file .env IMAGE start
#   docker run -v $PWD/call.wav:/call.wav IMAGE simulate --input /call.wav
#   docker run -p 8700:8700 -e SIDECAR_HOST=0.0.0.0 --env-file .env IMAGE sidecar
# requirements.lock pins linux/amd64 CPython 3.11 wheels by hash.
FROM python:3.11-slim-bookworm

RUN apt-get update \
    && apt-get install -y --no-install-recommends libportaudio2 libsndfile1 espeak-ng \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 10001 agent
WORKDIR /app

COPY requirements.lock .
RUN pip install --no-cache-dir --require-hashes -r requirements.lock

COPY agent.py pyproject.toml ./
COPY agent ./agent
COPY plugins ./plugins
COPY billing ./billing
COPY storage ./storage

USER agent
ENV PYTHONUNBUFFERED=1 DATA_DIR=/home/agent/data \
    DATABASE_URL=sqlite:////home/agent/data/voice_agent.db
# the worker's health endpoint (livekit-agents serves it on 8081 in production mode)
EXPOSE 8081 8700
ENTRYPOINT ["python", "agent.py"]
CMD ["start"]
