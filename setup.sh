#!/usr/bin/env bash
# Installs everything the agent and its tests need on Debian/Ubuntu with Python 3.11:
# system packages (only those missing) and a virtualenv in .venv with every Python package
# pinned by hash (requirements.lock). Safe to run again: it skips what is already done.
set -euo pipefail
cd "$(dirname "$0")"

# libportaudio2: the console's sound I/O; libsndfile1: reading WAV/FLAC;
# pulseaudio, pulseaudio-utils, libasound2-plugins: a virtual sound card for the console
# test (and headless machines); tmux: gives the console a terminal in tests;
# espeak-ng: phonemizer data for voices; python3.11-venv: creating .venv.
APT_PACKAGES=(libportaudio2 libsndfile1 pulseaudio pulseaudio-utils libasound2-plugins tmux espeak-ng)
# --tests (test.sh): chromium too, the headless browser the call page's tests drive, and
# both diarization extras (their tests run too); --diarization: the embedding diarizer's
# extra alone; --pyannote: that and the pyannote backend (PyTorch, ~1.6 GB)
[ "${1:-}" = "--tests" ] && APT_PACKAGES+=(chromium)
DIARIZATION=0
PYANNOTE=0
case "${1:-}" in --tests|--diarization|--pyannote) DIARIZATION=1 ;; esac
case "${1:-}" in --tests|--pyannote) PYANNOTE=1 ;; esac
PYTHON="${PYTHON:-python3.11}"

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
# The tests use the Redis and PostgreSQL servers running on 127.0.0.1 (6379, 5432) when
# there are any, and otherwise start their own from these packages.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
if ! port_open 6379 && ! command -v redis-server >/dev/null 2>&1; then
    missing+=(redis-server)
fi
if ! port_open 5432 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
    && ! command -v initdb >/dev/null 2>&1; then
    missing+=(postgresql)
fi
# nodejs and npm build the sidecar's call page (below)
if ! command -v npm >/dev/null 2>&1; then
    missing+=(nodejs npm)
fi
if ! command -v "$PYTHON" >/dev/null 2>&1; then
    missing+=(python3.11 python3.11-venv)
elif ! "$PYTHON" -c "import ensurepip" >/dev/null 2>&1; then
    missing+=(python3.11-venv)
fi
if ((${#missing[@]})); then
    echo "setup: installing system packages: ${missing[*]}" >&2
    sudo_cmd=()
    [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
    "${sudo_cmd[@]}" apt-get update -q
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv with $PYTHON" >&2
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.requirements.lock.sha256
want=$(sha256sum requirements.lock | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "setup: installing Python packages from requirements.lock" >&2
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q --require-hashes -r requirements.lock
    echo "$want" > "$stamp"
fi

# Offline diarization (requirements-diarization.lock): resemblyzer's voice encoder weights,
# scipy, pyannote.metrics. --no-deps: every package it needs is in one lock or the other,
# and resemblyzer's own dependencies (torch, librosa) are deliberately left out.
if [ "$DIARIZATION" = 1 ]; then
    dz_stamp=.venv/.requirements-diarization.lock.sha256
    dz_want=$(cat requirements.lock requirements-diarization.lock | sha256sum | cut -d' ' -f1)
    if [ "$(cat "$dz_stamp" 2>/dev/null)" != "$dz_want" ]; then
        echo "setup: installing the diarization extra" >&2
        .venv/bin/python -m pip install -q --no-deps --require-hashes -r requirements-diarization.lock
        echo "$dz_want" > "$dz_stamp"
    fi
fi

# The pyannote backend (requirements-pyannote.lock, DIARIZATION_MODEL_DIR): pyannote.audio and
# the CPU build of PyTorch, which only PyTorch's own index serves (unless pip finds the wheel
# elsewhere already, as on a machine with a local mirror: tried first, so that an offline
# machine with the wheel is not sent to the network).
if [ "$PYANNOTE" = 1 ]; then
    pa_stamp=.venv/.requirements-pyannote.lock.sha256
    pa_want=$(cat requirements.lock requirements-diarization.lock requirements-pyannote.lock \
        | sha256sum | cut -d' ' -f1)
    if [ "$(cat "$pa_stamp" 2>/dev/null)" != "$pa_want" ]; then
        echo "setup: installing the pyannote backend (PyTorch CPU, ~1.6 GB)" >&2
        pa_install=(.venv/bin/python -m pip install -q --no-deps --require-hashes
            -r requirements-pyannote.lock)
        "${pa_install[@]}" 2>/dev/null \
            || "${pa_install[@]}" --extra-index-url https://download.pytorch.org/whl/cpu
        # torchaudio's compiled extension links CUDA libraries and fails to load on the CPU
        # build of torch; without it torchaudio loads its pure-Python parts, all pyannote uses
        find .venv/lib -path "*/torchaudio/lib/_torchaudio.so" -delete
        echo "$pa_want" > "$pa_stamp"
    fi
fi

# The sidecar's /call page: livekit-client (pinned in billing/web/package-lock.json)
# bundled with esbuild into billing/web/dist/call.js; rebuilt when its sources change.
web=billing/web
web_stamp=$web/dist/.sources.sha256
web_want=$(cat $web/package-lock.json $web/src/*.js | sha256sum | cut -d' ' -f1)
if [ "$(cat "$web_stamp" 2>/dev/null)" != "$web_want" ]; then
    echo "setup: building the call page (npm ci, esbuild)" >&2
    (cd $web && npm ci --no-audit --no-fund --loglevel=error && npm run --silent build)
    echo "$web_want" > "$web_stamp"
fi
