"""``POST /v1/tokens``: a LiveKit access token for a browser user of the organisation's
agent (the ``/call`` page uses it).

The token joins one new room, and dispatches the worker's agent into it with the
organisation and agent in the job's metadata, so the call is admitted, metered and
answered like a phone call. Any member of the organisation may ask (an API key holder);
the agent must be the organisation's own.
"""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter
from pydantic import BaseModel, Field

from billing.api.deps import AnyMember, DbSession, Resources
from billing.api.errors import COMMON_RESPONSES, NOT_FOUND, NotFound, ServiceUnavailable
from storage.models import Agent, RowId

router = APIRouter(prefix="/v1/tokens", tags=["calls"], responses=COMMON_RESPONSES)

TOKEN_TTL = timedelta(minutes=10)
"""How long the token may be used to join (the call itself may last longer)."""


class TokenIn(BaseModel):
    agent_id: RowId
    identity: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")] | None = None
    """The user's identity in the room (default: ``web-`` and a random suffix)."""
    name: str | None = Field(default=None, max_length=100)


class TokenOut(BaseModel):
    url: str
    """The LiveKit server to connect to."""
    token: str
    room: str
    identity: str
    expires_at: datetime


@router.post(
    "",
    response_model=TokenOut,
    status_code=201,
    responses={**NOT_FOUND, 503: {"description": "LiveKit is not configured on this sidecar"}},
    summary="Mint a browser user's token to talk to an agent",
)
def create_token(
    body: TokenIn, principal: AnyMember, session: DbSession, resources: Resources
) -> TokenOut:
    agent = session.get(Agent, body.agent_id)
    if agent is None or agent.organisation_id != principal.organisation_id:
        raise NotFound("no such agent")
    access = resources.config.livekit
    if access is None:
        raise ServiceUnavailable(
            "this sidecar mints no LiveKit tokens: set LIVEKIT_URL, LIVEKIT_API_KEY and "
            "LIVEKIT_API_SECRET",
            reason="livekit_not_configured",
        )
    # imported here: the sidecar's other commands never load livekit
    from livekit import api

    identity = body.identity or f"web-{secrets.token_hex(4)}"
    room = f"web-{secrets.token_hex(8)}"
    metadata = json.dumps({"organisation_id": principal.organisation_id, "agent_id": agent.id})
    token = (
        api.AccessToken(access.api_key, access.api_secret)
        .with_identity(identity)
        .with_name(body.name or identity)
        .with_ttl(TOKEN_TTL)
        .with_grants(
            api.VideoGrants(room_join=True, room=room, can_publish=True, can_subscribe=True)
        )
        .with_room_config(
            api.RoomConfiguration(
                agents=[api.RoomAgentDispatch(agent_name=access.agent_name, metadata=metadata)]
            )
        )
        .to_jwt()
    )
    return TokenOut(
        url=access.url,
        token=token,
        room=room,
        identity=identity,
        expires_at=datetime.now(UTC) + TOKEN_TTL,
    )
