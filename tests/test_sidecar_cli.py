"""`python agent.py sidecar`: migrate, bootstrap, serve, and shut down cleanly on SIGTERM."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.test_cli import REPO, one_error_line, run_cli

SECRETS = {
    "SIDECAR_SERVICE_TOKEN": "service-token-0123456789",
    "PAYMENT_WEBHOOK_SECRETS": '{"acmepay": "webhook-secret-0123456789"}',
}


def sqlite_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "DATABASE_URL": f"sqlite:///{tmp_path / 'sidecar.db'}",
        "DATA_DIR": str(tmp_path),
        **extra,
    }


def test_migrate_creates_the_schema(tmp_path: Path):
    proc = run_cli("sidecar", "migrate", env=sqlite_env(tmp_path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "sidecar.db").exists()


def test_bootstrap_prints_the_admin_key_once(tmp_path: Path):
    proc = run_cli(
        "sidecar", "bootstrap", "--org", "Acme", "--admin-email", "ops@acme.test",
        env=sqlite_env(tmp_path), cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"admin API key \(shown once\): va_\S+", proc.stdout)


def test_bootstrap_with_unknown_plan_is_one_line(tmp_path: Path):
    proc = run_cli(
        "sidecar", "bootstrap", "--org", "Acme", "--admin-email", "a@b.test", "--plan", "gold",
        env=sqlite_env(tmp_path), cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "gold" in one_error_line(proc)


def test_serve_without_secrets_is_one_line(tmp_path: Path):
    proc = run_cli("sidecar", env=sqlite_env(tmp_path), cwd=tmp_path)
    assert proc.returncode == 1
    assert "SIDECAR_SERVICE_TOKEN" in one_error_line(proc)


@pytest.mark.parametrize(
    ("secrets", "named"),
    [
        ("{not json", "PAYMENT_WEBHOOK_SECRETS"),
        ('["acmepay"]', "PAYMENT_WEBHOOK_SECRETS"),
        ('{"Acme Pay": "webhook-secret-0123456789"}', "provider name"),
        ('{"acmepay": "short"}', "acmepay"),
    ],
    ids=["not JSON", "not an object", "bad provider name", "short secret"],
)
def test_malformed_payment_providers_are_one_line(tmp_path: Path, secrets: str, named: str):
    env = {**sqlite_env(tmp_path), **SECRETS, "PAYMENT_WEBHOOK_SECRETS": secrets}
    proc = run_cli("sidecar", env=env, cwd=tmp_path)
    assert proc.returncode != 0
    assert named in one_error_line(proc)


def test_rate_limits_and_providers_come_from_the_settings(monkeypatch: pytest.MonkeyPatch):
    from billing.settings import SidecarSettings

    for name, value in {
        **SECRETS,
        "SIDECAR_RATE_LIMIT_PER_IP": "7",
        "SIDECAR_RATE_LIMIT_PER_KEY": "8",
        "SIDECAR_RATE_LIMIT_WEBHOOK_PER_IP": "9",
        "SIDECAR_RATE_LIMIT_WINDOW_S": "30",
    }.items():
        monkeypatch.setenv(name, value)
    config = SidecarSettings(_env_file=None).config()  # type: ignore[call-arg]
    assert (
        config.rate_limit_per_ip,
        config.rate_limit_per_key,
        config.rate_limit_webhook_per_ip,
        config.rate_limit_window_s,
    ) == (7, 8, 9, 30.0)
    assert dict(config.payment_webhook_secrets) == {"acmepay": "webhook-secret-0123456789"}


def test_sidecar_commands_load_no_livekit_code(tmp_path: Path):
    import os

    code = (
        "import sys; from agent.cli import main; rc = main(['sidecar', 'migrate']); "
        "loaded = sorted(m for m in sys.modules if m.startswith('livekit')); "
        "print('livekit modules:', loaded); sys.exit(rc)"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEKIT_")}
    env |= {**sqlite_env(tmp_path), "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env,
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "livekit modules: []" in proc.stdout


def test_unreachable_database_is_one_line(tmp_path: Path):
    env = {"DATABASE_URL": "postgresql+psycopg://nobody@127.0.0.1:9/none", **SECRETS}
    proc = run_cli("sidecar", "migrate", env=env, cwd=tmp_path)
    assert proc.returncode == 1
    assert "cannot migrate the database" in one_error_line(proc)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_serves_health_and_exits_0_on_sigterm(tmp_path: Path):
    port = _free_port()
    env = {**sqlite_env(tmp_path), **SECRETS, "SIDECAR_PORT": str(port)}
    import os

    full_env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEKIT_")} | env
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "agent.py"), "sidecar"],
        cwd=tmp_path, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        health = None
        while time.monotonic() < deadline and health is None:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=1.0)
            except httpx.HTTPError:
                time.sleep(0.2)
        assert health is not None and health.status_code == 200, proc.stderr
        assert httpx.get(f"http://127.0.0.1:{port}/docs", timeout=2.0).status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=40) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_taken_port_is_one_line(tmp_path: Path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        env = {**sqlite_env(tmp_path), **SECRETS, "SIDECAR_PORT": str(busy.getsockname()[1])}
        proc = run_cli("sidecar", env=env, cwd=tmp_path)
    assert proc.returncode == 1
    assert "SIDECAR_PORT is taken" in one_error_line(proc)


def test_an_unreachable_redis_is_one_line_without_its_password(tmp_path: Path):
    env = {**sqlite_env(tmp_path), **SECRETS, "SIDECAR_PORT": str(_free_port()),
           "REDIS_URL": "redis://:hunter2-password@127.0.0.1:9/0"}  # fmt: skip
    proc = run_cli("sidecar", env=env, cwd=tmp_path)
    assert proc.returncode == 1
    line = one_error_line(proc)
    assert "cannot reach Redis at REDIS_URL" in line and "hunter2" not in line


@pytest.mark.parametrize(
    "url", ["not a url", "mysql://x@127.0.0.1:9/none", "sqlite:////proc/no-db-here/x.db"]
)
def test_a_malformed_or_unusable_database_url_is_one_line(tmp_path: Path, url: str):
    proc = run_cli("sidecar", "migrate", env={"DATABASE_URL": url, **SECRETS}, cwd=tmp_path)
    assert proc.returncode == 1
    assert "DATABASE_URL" in one_error_line(proc)
