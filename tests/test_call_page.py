"""Browser users: ``POST /v1/tokens`` mints a LiveKit token for an organisation's API key
holder, and the ``/call`` page (livekit-client, bundled) uses it, driven in headless
Chromium (Debian's, through Playwright) as far as no LiveKit server is needed: it loads,
refuses a bad key in words, fetches a token with a good one, and says clearly that the
LiveKit server cannot be reached. Nothing it loads comes from anywhere but the sidecar."""

from __future__ import annotations

import json
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from livekit import api

from billing.api.app import create_app
from billing.api.routes.call_page import BUNDLE
from billing.config import LiveKitAccess
from storage.models import Role
from tests.api_client import Seeder, make_config, serving

LK_KEY, LK_SECRET = "browser-key", "browser-secret-of-at-least-32-chars"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def _unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def sidecar(engine, database_url, tmp_path) -> Iterator[tuple[str, Seeder, str]]:  # type: ignore[no-untyped-def]
    """The sidecar served on 127.0.0.1, its tokens pointing at a LiveKit server that is
    not there; (its URL, a seeder, that LiveKit URL)."""
    livekit_url = f"ws://127.0.0.1:{_unused_port()}"
    access = LiveKitAccess(livekit_url, LK_KEY, LK_SECRET, agent_name="voice-agent")
    config = make_config(database_url, tmp_path / "rec", livekit=access)
    with serving(create_app(config, engine=engine)) as url:
        yield url, Seeder(engine, tmp_path / "rec"), livekit_url


# -- the token ----------------------------------------------------------------------------


def test_a_member_gets_a_token_for_one_room_with_the_agent_dispatched(sidecar):
    import httpx

    url, seed, livekit_url = sidecar
    org = seed.organisation()
    member = seed.member(org, Role.viewer)
    agent = seed.agent(org, member.user_id)
    resp = httpx.post(f"{url}/v1/tokens", json={"agent_id": agent}, headers=member.headers)
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert body["url"] == livekit_url and body["identity"].startswith("web-")
    claims = api.TokenVerifier(LK_KEY, LK_SECRET).verify(body["token"])
    assert claims.identity == body["identity"]
    assert claims.video.room_join and claims.video.room == body["room"]
    [dispatch] = claims.room_config.agents
    assert dispatch.agent_name == "voice-agent"
    assert json.loads(dispatch.metadata) == {"organisation_id": org, "agent_id": agent}


def test_tokens_are_refused_clearly(sidecar, engine, database_url, tmp_path):
    import httpx

    url, seed, _ = sidecar
    org, other = seed.organisation(), seed.organisation()
    member = seed.member(org, Role.agent)
    theirs = seed.agent(other, seed.member(other, Role.admin).user_id)
    post = lambda body, headers: httpx.post(f"{url}/v1/tokens", json=body, headers=headers)  # noqa: E731
    assert post({"agent_id": theirs}, member.headers).status_code == 404
    assert post({"agent_id": 1}, {"X-API-Key": "va_not-a-key"}).status_code == 401
    assert post({"agent_id": 1}, {}).status_code == 401
    for bad in ({}, {"agent_id": 0}, {"agent_id": "x"}, {"agent_id": 1, "identity": "a b"}):
        assert post(bad, member.headers).status_code == 422, bad
    # a sidecar without LiveKit settings says which
    mine = seed.agent(org, member.user_id)
    with serving(create_app(make_config(database_url, tmp_path / "r2"), engine=engine)) as bare:
        resp = httpx.post(f"{bare}/v1/tokens", json={"agent_id": mine}, headers=member.headers)
    assert resp.status_code == 503 and "LIVEKIT_URL" in resp.json()["detail"]


@pytest.mark.parametrize(
    "url, key, secret, complaint",
    [
        ("localhost:7880", "k", "s" * 32, "LIVEKIT_URL"),
        ("wss://lk.example.com", "", "s" * 32, "LIVEKIT_API_KEY"),
        ("wss://lk.example.com", "k", "short", "LIVEKIT_API_SECRET"),
        ("wss://lk.example.com", "k", "s" * 31, "at least 32"),
    ],
)
def test_malformed_livekit_settings_are_refused(url, key, secret, complaint):
    with pytest.raises(ValueError, match=complaint):
        LiveKitAccess(url, key, secret)


# -- the page in headless Chromium --------------------------------------------------------

needs_browser = pytest.mark.skipif(
    not (Path(CHROMIUM).exists() and BUNDLE.is_file()),
    reason="needs Debian's chromium and the built page (./setup.sh --tests)",
)


@pytest.fixture
def browser_page():  # type: ignore[no-untyped-def]
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
            ],
        )
        page = browser.new_page()
        requested: list[str] = []
        page.on("request", lambda r: requested.append(r.url))
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        try:
            yield page, requested, errors
        finally:
            browser.close()


@needs_browser
@pytest.mark.slow
def test_the_page_refuses_a_bad_key_then_says_the_server_cannot_be_reached(sidecar, browser_page):
    url, seed, livekit_url = sidecar
    page, requested, errors = browser_page
    org = seed.organisation()
    member = seed.member(org, Role.viewer)
    agent = seed.agent(org, member.user_id)

    page.goto(f"{url}/call")
    assert page.title() == "Talk to the agent"
    assert page.locator("#status").inner_text() == "Not connected."

    page.fill("#key", "va_this-is-not-a-key")
    page.fill("#agent", str(agent))
    page.click("#call")
    page.wait_for_selector('#status[data-state="error"]')
    assert "API key was refused" in page.locator("#status").inner_text()

    page.fill("#key", member.api_key)
    with page.expect_response(f"{url}/v1/tokens") as token_response:
        page.click("#call")
    assert token_response.value.status == 201
    page.wait_for_selector('#status[data-state="error"]', timeout=30_000)
    shown = page.locator("#status").inner_text()
    assert f"Cannot reach the LiveKit server at {livekit_url}" in shown
    assert page.locator("#call").is_enabled()  # the user can try again

    origins = {r.split("/")[2] for r in requested}
    assert origins <= {url.split("/")[2], livekit_url.split("/")[2]}, origins  # no CDN
    assert errors == []


@needs_browser
@pytest.mark.slow
def test_the_page_names_a_missing_agent(sidecar, browser_page):
    url, seed, _ = sidecar
    page, _, _ = browser_page
    org = seed.organisation()
    member = seed.member(org, Role.viewer)
    page.goto(f"{url}/call")
    page.fill("#key", member.api_key)
    page.fill("#agent", "999999")
    page.click("#call")
    page.wait_for_selector('#status[data-state="error"]')
    assert "no agent 999999" in page.locator("#status").inner_text()


def test_the_page_says_when_it_was_not_built(sidecar, monkeypatch, tmp_path):
    import httpx

    import billing.api.routes.call_page as call_page

    url, _, _ = sidecar
    monkeypatch.setattr(call_page, "BUNDLE", tmp_path / "missing.js")
    resp = httpx.get(f"{url}/call/call.js")
    assert resp.status_code == 503 and "setup.sh" in resp.json()["detail"]
    page = httpx.get(f"{url}/call")
    assert (
        page.status_code == 200 and "script-src 'self'" in page.headers["content-security-policy"]
    )


async def test_the_sidecar_health_asks_the_livekit_api(engine, database_url, tmp_path):
    import httpx

    from tests.loopback.livekit_server import API_KEY, API_SECRET, LiveKitServer

    async with LiveKitServer() as livekit:
        good = LiveKitAccess(livekit.url, API_KEY, API_SECRET)
        wrong = LiveKitAccess(livekit.url, API_KEY, "not-the-secret-of-32-characters!")
        gone = LiveKitAccess(f"ws://127.0.0.1:{_unused_port()}", API_KEY, API_SECRET)
        for access, status in ((good, "healthy"), (wrong, "unhealthy"), (gone, "unhealthy")):
            config = make_config(database_url, tmp_path / "rec", livekit=access)
            app = create_app(config, engine=engine)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://sidecar") as c:
                resp = await c.get("/health")
            body = resp.json()
            assert resp.status_code == 200, body  # LiveKit down never takes the sidecar out
            assert body["dependencies"]["livekit"]["status"] == status, body
            assert body["status"] == ("healthy" if status == "healthy" else "degraded")
        assert livekit.calls("RoomService/ListRooms")
