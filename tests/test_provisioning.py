"""``provision-sip`` and ``call`` through the real ``livekit-api`` client against the
loopback LiveKit server: the numbers file becomes trunks and dispatch rules, a second run
changes nothing, ``--dry-run`` changes nothing, a changed file updates and prunes only
what it manages, and every malformed file or refusal is one clear line."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
import yaml
from livekit import api

from agent.cli import main
from agent.provisioning import Provisioner, ProvisioningError, SipConfig, load_config
from tests.fake_room import loopback_api
from tests.loopback.livekit_server import API_KEY, API_SECRET, LiveKitServer

REPO = Path(__file__).resolve().parents[1]
CONFIG = {
    "inbound": {"allowed_addresses": ["203.0.113.0/24"]},
    "outbound": {
        "address": "sip.carrier.example.com",
        "numbers": ["+15550142000"],
        "auth_username": "va",
        "auth_password_env": "TEST_SIP_OUT_PASSWORD",
    },
    "numbers": [
        {"number": "+15550142000", "organisation_id": 1, "agent_id": 2},
        {"number": "+15550142001", "organisation_id": 1, "agent_id": 3, "hold": False},
    ],
}


@pytest.fixture(autouse=True)
def _password(monkeypatch):
    monkeypatch.setenv("TEST_SIP_OUT_PASSWORD", "s3cret-password-value")


@pytest_asyncio.fixture
async def lkapi(livekit_server: LiveKitServer) -> AsyncIterator[api.LiveKitAPI]:
    client = loopback_api(livekit_server)
    yield client
    await client.aclose()


async def provision(lkapi: api.LiveKitAPI, config: dict) -> list[str]:
    provisioner = Provisioner(lkapi, SipConfig.model_validate(config), "voice-agent")
    plan = await provisioner.plan()
    await provisioner.apply(plan)
    return [c.action for c in plan.changes]


async def test_the_file_becomes_trunks_and_rules_and_a_second_run_changes_nothing(
    lkapi, livekit_server
):
    actions = await provision(lkapi, CONFIG)
    assert actions == ["create"] * 5
    state = livekit_server.state
    assert sorted(t.numbers[0] for t in state.inbound_trunks.values()) == [
        "+15550142000",
        "+15550142001",
    ]
    [out] = state.outbound_trunks.values()
    assert out.address == "sip.carrier.example.com"
    assert out.auth_password == "s3cret-password-value"
    rules = {r.name: r for r in state.dispatch_rules.values()}
    rule = rules["voice-agent:rule:+15550142000"]
    trunk = next(t for t in state.inbound_trunks.values() if t.numbers == ["+15550142000"])
    assert list(rule.trunk_ids) == [trunk.sip_trunk_id]
    assert rule.rule.dispatch_rule_individual.room_prefix == "call-"
    [dispatch] = rule.room_config.agents
    assert dispatch.agent_name == "voice-agent"
    assert json.loads(dispatch.metadata) == {
        "organisation_id": 1,
        "agent_id": 2,
        "dialled_number": "+15550142000",
        "hold": True,
    }
    assert not json.loads(rules["voice-agent:rule:+15550142001"].room_config.agents[0].metadata)[
        "hold"
    ]

    writes = len(livekit_server.writes)
    assert await provision(lkapi, CONFIG) == ["keep"] * 5
    assert len(livekit_server.writes) == writes, "the second run changed something"


async def test_a_changed_file_updates_and_prunes_only_what_it_manages(lkapi, livekit_server):
    await provision(lkapi, CONFIG)
    foreign = await lkapi.sip.create_inbound_trunk(
        api.CreateSIPInboundTrunkRequest(
            trunk=api.SIPInboundTrunkInfo(name="someone-else", numbers=["+15550199999"])
        )
    )
    route = {"number": "+15550142000", "organisation_id": 1, "agent_id": 9}
    changed = {**CONFIG, "numbers": [route]}
    actions = await provision(lkapi, changed)
    assert sorted(actions) == sorted(["keep", "delete", "keep", "update", "delete"])
    state = livekit_server.state
    assert foreign.sip_trunk_id in state.inbound_trunks, "a trunk it does not manage was touched"
    assert [r.name for r in state.dispatch_rules.values()] == ["voice-agent:rule:+15550142000"]
    [rule] = state.dispatch_rules.values()
    assert json.loads(rule.room_config.agents[0].metadata)["agent_id"] == 9
    assert await provision(lkapi, changed) == ["keep"] * 3


def _cli_env(monkeypatch, server: LiveKitServer) -> None:
    monkeypatch.setenv("LIVEKIT_URL", server.url)
    monkeypatch.setenv("LIVEKIT_API_KEY", API_KEY)
    monkeypatch.setenv("LIVEKIT_API_SECRET", API_SECRET)
    monkeypatch.setenv("AGENT_NAME", "voice-agent")
    monkeypatch.chdir(REPO)


async def test_the_cli_dry_run_prints_the_plan_masked_and_changes_nothing(
    livekit_server, monkeypatch, tmp_path, capsys
):
    _cli_env(monkeypatch, livekit_server)
    path = tmp_path / "sip.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    code = await asyncio.to_thread(main, ["provision-sip", "--config", str(path), "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0 and "dry run: 5 change(s) planned, none made" in out
    assert "create inbound trunk voice-agent:in:+*******2000" in out
    assert "0142000" not in out and "s3cret" not in out
    assert livekit_server.writes == []

    code = await asyncio.to_thread(main, ["provision-sip", "--config", str(path)])
    out = capsys.readouterr().out
    [trunk] = livekit_server.state.outbound_trunks.values()
    assert code == 0 and f"SIP_OUTBOUND_TRUNK_ID={trunk.sip_trunk_id}" in out


async def test_the_shipped_example_file_is_valid():
    config = load_config(REPO / "sip.yaml")
    assert config.numbers and config.outbound is not None


@pytest.mark.parametrize(
    "text, complaint",
    [
        ("numbers: [unclosed", "not valid YAML"),
        ("- a list", "expected a mapping"),
        ("numbrs: []", "numbrs: Extra inputs"),
        ("numbers: [{number: '555-0100', organisation_id: 1, agent_id: 1}]", "numbers.0.number"),
        ("numbers: [{number: '+15550100', organisation_id: 0, agent_id: 1}]", "organisation_id"),
        ("numbers: [{number: '+15550100', agent_id: 1}]", "organisation_id: Field required"),
        (
            "numbers: [{number: '+15550100', organisation_id: 1, agent_id: 1},"
            " {number: '+15550100', organisation_id: 1, agent_id: 2}]",
            "each number once",
        ),
        ("inbound: {auth_username: va}", "come together"),
        ("inbound: {auth_username: va, auth_password_env: 'lower-case'}", "auth_password_env"),
        ("outbound: {address: 'sip.example.com'}", "outbound.numbers: Field required"),
        ("outbound: {address: 'a b', numbers: ['+15550100']}", "outbound.address"),
        ("outbound: {address: x, numbers: ['+15550100'], transport: sctp}", "transport"),
    ],
)
def test_a_malformed_file_is_one_clear_error(tmp_path, text, complaint):
    path = tmp_path / "sip.yaml"
    path.write_text(text)
    with pytest.raises(ProvisioningError) as err:
        load_config(path)
    assert str(err.value).startswith(str(path)) and complaint in str(err.value)


def test_a_missing_file_says_so(tmp_path):
    with pytest.raises(ProvisioningError, match="cannot read"):
        load_config(tmp_path / "nope.yaml")


async def test_an_unset_password_variable_is_named_before_any_change(lkapi, livekit_server):
    config = {**CONFIG, "outbound": {**CONFIG["outbound"], "auth_password_env": "NOT_SET_X"}}
    with pytest.raises(ProvisioningError, match="NOT_SET_X is not set"):
        await provision(lkapi, config)
    assert livekit_server.writes == []


async def test_a_refusal_names_what_was_refused_and_a_rerun_finishes(lkapi, livekit_server):
    livekit_server.options.status = 503
    livekit_server.options.methods = frozenset({"SIP/CreateSIPDispatchRule"})
    with pytest.raises(ProvisioningError, match="refused to create dispatch rule"):
        await provision(lkapi, CONFIG)
    livekit_server.options.status = None
    assert sorted(await provision(lkapi, CONFIG)) == ["create", "create", "keep", "keep", "keep"]


# -- python agent.py call -------------------------------------------------------------------


async def test_the_call_command_dials_through_the_outbound_trunk(
    livekit_server, lkapi, monkeypatch, capsys
):
    await provision(lkapi, CONFIG)
    [trunk] = livekit_server.state.outbound_trunks.values()
    _cli_env(monkeypatch, livekit_server)
    monkeypatch.setenv("SIP_OUTBOUND_TRUNK_ID", trunk.sip_trunk_id)
    code = await asyncio.to_thread(main, ["call", "+15557654321", "--agent-id", "2"])
    assert code == 0 and "answered: room call-out-" in capsys.readouterr().out
    [dial] = livekit_server.calls("SIP/CreateSIPParticipant")
    assert dial.sip_call_to == "+15557654321" and dial.sip_trunk_id == trunk.sip_trunk_id


async def test_the_call_command_says_why_it_cannot_call(livekit_server, monkeypatch, capsys):
    _cli_env(monkeypatch, livekit_server)
    monkeypatch.delenv("SIP_OUTBOUND_TRUNK_ID", raising=False)
    assert await asyncio.to_thread(main, ["call", "+15557654321"]) == 1
    assert "needs SIP_OUTBOUND_TRUNK_ID" in capsys.readouterr().err
    assert await asyncio.to_thread(main, ["call", "5557654321"]) == 2
    assert "E.164" in capsys.readouterr().err
    monkeypatch.setenv("SIP_OUTBOUND_TRUNK_ID", "ST_unknown")
    assert await asyncio.to_thread(main, ["call", "+15557654321"]) == 1
    assert "did not connect (failed)" in capsys.readouterr().err
    assert livekit_server.writes[-1] == "RoomService/DeleteRoom"  # the room it made is gone
