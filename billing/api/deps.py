"""Dependencies every route declares: the app's resources, one database session per
request, the caller's identity from ``X-API-Key``, its role, and the workers' service
token.

Authorization is a dependency on each route (``AnyMember``, ``Admin``, ...), never a check
inside a handler, so the role a route needs is visible in its signature and in one test
table (``tests/test_api_roles.py``).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Query, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlmodel import Session

from billing.api.errors import Forbidden, TooManyRequests, Unauthorized
from billing.api.resources import SidecarResources, resources_of
from billing.config import SidecarConfig
from billing.keys import authenticate, key_prefix_of, looks_like_key
from storage.models import ROW_ID_MAX, Role

logger = logging.getLogger(__name__)

API_KEY_HEADER = "X-API-Key"
_KEY_QUERY_NAMES = frozenset({"api_key", "apikey", "api-key", "x-api-key", "key", "token"})
_USE_HEADER = f"send the API key in the {API_KEY_HEADER} header, and only there"


async def get_resources(request: Request) -> SidecarResources:
    # async: a sync dependency would cost a worker-thread hop for an attribute lookup
    return resources_of(request.app)


Resources = Annotated[SidecarResources, Depends(get_resources)]


def db_session(resources: Resources) -> Iterator[Session]:
    """One session per request, never shared: FastAPI caches this per request, so the
    auth dependency and the handler use the same session. Handlers commit what they
    change; whatever is uncommitted when the request ends is rolled back."""
    with Session(resources.engine) as session:
        yield session


DbSession = Annotated[Session, Depends(db_session)]


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's user, organisation and role."""

    user_id: int
    organisation_id: int
    role: Role
    key_id: int
    key_prefix: str

    @property
    def actor(self) -> str:
        """How the audit log names this caller."""
        return f"key:{self.key_prefix}"

    @property
    def is_admin(self) -> bool:
        return self.role is Role.admin


_api_key_scheme = APIKeyHeader(
    name=API_KEY_HEADER, auto_error=False, description="An API key, shown once when issued."
)


def authenticated(
    request: Request,
    session: DbSession,
    resources: Resources,
    api_key: Annotated[str | None, Security(_api_key_scheme)],
) -> Principal:
    """The caller behind ``X-API-Key``.

    Raises Unauthorized when the key is missing, invalid or revoked, and when a key (or
    any credential) arrives in the query string or the Authorization header: those end up
    in proxy logs and browser history, so they are refused even next to a good header.
    Raises TooManyRequests when the key is over its rate limit.
    """
    _refuse_misplaced_credentials(request)
    if not api_key:
        raise Unauthorized(f"missing {API_KEY_HEADER} header", headers=_challenge())
    found = authenticate(session, api_key)
    if found is None:
        raise Unauthorized("invalid or revoked API key", headers=_challenge())
    key, user = found
    assert key.id is not None and user.id is not None  # loaded rows
    principal = Principal(
        user_id=user.id,
        organisation_id=user.organisation_id,
        role=Role(user.role),
        key_id=key.id,
        key_prefix=key.prefix,
    )
    # last_used_at, committed on its own (the request may still fail later); read the
    # rows first, since the commit expires them
    session.commit()
    retry_after_s = resources.rate_limits.retry_after_s("key", principal.key_prefix)
    if retry_after_s is not None:
        raise TooManyRequests(
            "rate limit exceeded for this API key",
            reason="rate_limit_key",
            headers={"Retry-After": str(retry_after_s)},
        )
    return principal


def _refuse_misplaced_credentials(request: Request) -> None:
    for name, value in request.query_params.multi_items():
        if name.lower() in _KEY_QUERY_NAMES or looks_like_key(value):
            # the prefix only: it identifies the key without being a credential
            logger.warning(
                "API key sent in a query string",
                extra={"path": request.url.path, "key_prefix": key_prefix_of(value)},
            )
            raise Unauthorized(
                f"API keys in the URL are refused: {_USE_HEADER}", headers=_challenge()
            )
    if "authorization" in request.headers:
        raise Unauthorized(
            f"the Authorization header is not accepted here: {_USE_HEADER}", headers=_challenge()
        )


def _challenge() -> dict[str, str]:
    return {"WWW-Authenticate": f'ApiKey header="{API_KEY_HEADER}"'}


class RoleGate:
    """A dependency that lets through only callers with one of ``roles``; raises
    Unauthorized (no valid key) or Forbidden (wrong role)."""

    def __init__(self, *roles: Role) -> None:
        self.roles = frozenset(roles)

    def __call__(self, principal: Annotated[Principal, Depends(authenticated)]) -> Principal:
        if principal.role not in self.roles:
            allowed = " or ".join(sorted(r.value for r in self.roles))
            raise Forbidden(f"this needs the {allowed} role; your key's role is {principal.role}")
        return principal


AnyMember = Annotated[Principal, Depends(RoleGate(Role.admin, Role.agent, Role.viewer))]
"""Every role; what each sees may still be narrowed (an agent sees its own agents)."""
Admin = Annotated[Principal, Depends(RoleGate(Role.admin))]
AgentEditor = Annotated[Principal, Depends(RoleGate(Role.admin, Role.agent))]
"""Admins, and agent users for their own agents, calls and recordings."""
BillingReader = Annotated[Principal, Depends(RoleGate(Role.admin, Role.viewer))]
"""Usage, balance, notifications, the organisation: admins and viewers."""


def service_token_matches(config: SidecarConfig, token: str) -> bool:
    """Constant-time comparison with the configured worker service token."""
    return hmac.compare_digest(token.encode(), config.service_token.encode())


_bearer_scheme = HTTPBearer(auto_error=False, description="The workers' service token.")


def require_service_token(
    resources: Resources,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer_scheme)],
) -> None:
    """Lets through only ``Authorization: Bearer <service_token>``; raises Unauthorized."""
    if credentials is None or not service_token_matches(resources.config, credentials.credentials):
        raise Unauthorized("missing or wrong service token", headers={"WWW-Authenticate": "Bearer"})


ServiceCaller = Depends(require_service_token)


# every list route pages the same way: newest or lowest id first, ``limit`` rows from ``offset``
Limit = Annotated[int, Query(ge=1, le=500, description="Rows to return (1-500).")]
Offset = Annotated[int, Query(ge=0, le=ROW_ID_MAX, description="Rows to skip.")]
