#!/usr/bin/env bash
# The main job on embedded defaults: installs what is missing, then runs a whole call
# offline. The caller is a real telephone recording (tests/data/sample.wav, 12.3-14.5 s:
# "This is Diane in New Jersey."); the agent greets, listens and answers. Its voice goes to
# out/reply.wav and the call report (transcripts, latencies, usage) to out/report.json.
# Extra arguments go to `agent.py simulate` (e.g. --input my_call.wav --start 0 --end 20).
set -euo pipefail
cd "$(dirname "$0")"
bash setup.sh
if [ "$#" -eq 0 ]; then
    set -- --input tests/data/sample.wav --start 12.3 --end 14.5
fi
exec .venv/bin/python agent.py simulate --output out/reply.wav --report out/report.json "$@"
