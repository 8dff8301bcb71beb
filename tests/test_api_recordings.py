"""Recordings: downloads stream the stored file; deletion removes it and marks the row;
nothing outside the recordings folder is ever served."""

from __future__ import annotations

import hashlib
import os

from sqlmodel import Session

from storage.models import Recording, Role
from tests.api_client import Member, SidecarApi


def _admin(sidecar: SidecarApi) -> Member:
    return sidecar.seed.member(sidecar.seed.organisation(), Role.admin)


def test_a_download_streams_the_stored_file(shared_sidecar: SidecarApi) -> None:
    seed = shared_sidecar.seed
    admin = _admin(shared_sidecar)
    content = os.urandom(300_000)
    recording = seed.recording(
        admin.organisation_id, seed.call(admin.organisation_id, None), content
    )
    response = shared_sidecar.client.get(
        f"/v1/recordings/{recording}/download", headers=admin.headers
    )
    assert response.status_code == 200
    assert hashlib.sha256(response.content).digest() == hashlib.sha256(content).digest()
    assert response.headers["Content-Type"] == "application/octet-stream"
    assert f"recording-{recording}.wav" in response.headers["Content-Disposition"]


def test_deleting_removes_the_file_and_hides_the_recording(shared_sidecar: SidecarApi) -> None:
    seed = shared_sidecar.seed
    admin = _admin(shared_sidecar)
    recording_id = seed.recording(admin.organisation_id, seed.call(admin.organisation_id, None))
    row = seed.get(Recording, recording_id)
    path = shared_sidecar.config.recordings_dir / row.path
    client = shared_sidecar.client
    assert client.delete(f"/v1/recordings/{recording_id}", headers=admin.headers).status_code == 204
    assert not path.exists()
    assert seed.get(Recording, recording_id).deleted_at is not None
    assert (
        client.get(f"/v1/recordings/{recording_id}/download", headers=admin.headers).status_code
        == 404
    )
    assert recording_id not in [
        r["id"] for r in client.get("/v1/recordings", headers=admin.headers).json()
    ]
    assert client.delete(f"/v1/recordings/{recording_id}", headers=admin.headers).status_code == 404
    log = client.get("/v1/audit-log", params={"action": "recording.deleted"}, headers=admin.headers)
    assert [entry["subject"] for entry in log.json()] == [f"recording:{recording_id}"]


def test_a_path_outside_the_recordings_folder_is_never_served(shared_sidecar: SidecarApi) -> None:
    seed = shared_sidecar.seed
    admin = _admin(shared_sidecar)
    call = seed.call(admin.organisation_id, None)
    outside = shared_sidecar.config.recordings_dir.parent / "secret.txt"
    outside.write_text("not a recording")
    ids = []
    with Session(shared_sidecar.engine) as session:
        for path in ("../secret.txt", str(outside)):
            row = Recording(
                organisation_id=admin.organisation_id,
                call_id=call,
                path=path,
                size_bytes=1,
                sha256="0" * 64,
            )
            session.add(row)
            session.flush()
            ids.append(row.id)
        session.commit()
    for recording_id in ids:
        client = shared_sidecar.client
        assert (
            client.get(f"/v1/recordings/{recording_id}/download", headers=admin.headers).status_code
            == 404
        )
        assert (
            client.delete(f"/v1/recordings/{recording_id}", headers=admin.headers).status_code
            == 404
        )
    assert outside.read_text() == "not a recording"


def test_a_missing_file_is_404(shared_sidecar: SidecarApi) -> None:
    seed = shared_sidecar.seed
    admin = _admin(shared_sidecar)
    recording_id = seed.recording(admin.organisation_id, seed.call(admin.organisation_id, None))
    (shared_sidecar.config.recordings_dir / seed.get(Recording, recording_id).path).unlink()
    response = shared_sidecar.client.get(
        f"/v1/recordings/{recording_id}/download", headers=admin.headers
    )
    assert response.status_code == 404
