"""Quota checks: whether a new call may start, and whether an organisation may add an agent.

A call is admitted when its organisation has monthly minutes left, a positive balance if
its plan is prepaid, and a free slot in every concurrency scope it belongs to (the
organisation, and the dialled number when its agent caps it). The slots are a lease
named after the call, which the worker heart-beats while the call lives and releases at
its end; a worker that dies leaks nothing, because its leases expire.

Quotas only ever refuse *new* calls: nothing here ends a live call or takes its slot.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine, func
from sqlmodel import Session, col, select

from billing.notify import Notifier
from storage.db import session_scope
from storage.hold_queue import HoldQueue, MemoryHoldQueue
from storage.leases import LeaseScope, LeaseStore
from storage.models import Agent, Organisation, Plan, UsageKind, UsageRecord

logger = logging.getLogger(__name__)

UNKNOWN_AGENT = "unknown_agent"
CONCURRENT_CALLS_LIMIT = "concurrent_calls_limit"
NUMBER_CONCURRENCY_LIMIT = "number_concurrency_limit"
HOLD_QUEUE_FULL = "hold_queue_full"
QUEUED = "queued"
MONTHLY_MINUTES_EXHAUSTED = "monthly_minutes_exhausted"
BALANCE_EXHAUSTED = "balance_exhausted"
MAX_AGENTS = "max_agents"

CALLER_MESSAGES: dict[str, str] = {
    UNKNOWN_AGENT: "Sorry, this agent is not available.",
    CONCURRENT_CALLS_LIMIT: "All our agents are busy right now; please try again in a few minutes.",
    NUMBER_CONCURRENCY_LIMIT: "This line is busy right now; please call again in a few minutes.",
    HOLD_QUEUE_FULL: "All our agents are busy right now; please try again in a few minutes.",
    MONTHLY_MINUTES_EXHAUSTED: "Sorry, this line has reached its calling limit for this month.",
    BALANCE_EXHAUSTED: "Sorry, this line cannot take calls right now; please try again later.",
}
"""What a refused caller hears (or a room user reads), by reason: one short sentence that
says nothing about the organisation's billing."""

ADMITTED_MESSAGE = "Call admitted."
HOLD_MESSAGE = "All our agents are busy. Please hold, and you will be connected in turn."
"""What a queued caller hears before the hold music."""
HOLD_QUEUE_MAX = 10
"""Callers one organisation may have waiting at once (``HOLD_QUEUE_MAX``)."""
HOLD_ENTRY_TTL_S = 10.0
"""A waiting caller whose worker has not asked again within this has left the queue."""
UNLIMITED = 2**31 - 1
"""The scope limit a resumed (live) call's lease is taken with."""


class QuotaExceeded(Exception):
    """A plan limit refuses the action; ``message`` is fit to show the user."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class AdmissionRequest:
    """A call asking to start. The organisation comes from ``agent_id``, else from the
    agent reached on ``dialled_number``, else from ``organisation_id``.

    ``resume``: the call is already live but holds no lease (it was lost, e.g. to a
    sidecar restart with in-process leases, or never taken because the sidecar was down
    when the call started). Such a call is never refused for a quota: it takes its slots
    even over the limits, so that it counts against new calls again."""

    call_id: str
    agent_id: int | None = None
    dialled_number: str | None = None
    organisation_id: int | None = None
    resume: bool = False
    hold: bool = False
    """The caller can wait (a phone caller hears hold music): at the concurrency limit the
    call is queued in arrival order instead of refused. Ask again, at least every
    :data:`HOLD_ENTRY_TTL_S`, to keep the place and to be admitted at the head."""


def lease_id_for(organisation_id: int, call_id: str) -> str:
    """The lease of one organisation's call: ``"<organisation id>:<call id>"``. Keyed by
    both, so two organisations' calls that share an id never share (or free) a lease, and
    a lease id names its owner: only the organisation's own call can renew or release it."""
    return f"{organisation_id}:{call_id}"


@dataclass(frozen=True)
class Admission:
    """The decision. Admitted: ``lease_id`` (:func:`lease_id_for`) is the lease to
    heartbeat and release. Refused: ``reason`` is one of the reason codes and ``message``
    the caller's sentence."""

    admitted: bool
    lease_id: str | None
    reason: str | None
    message: str
    organisation_id: int | None = None
    """Admitted: the organisation the call is billed to, however it was found (its id,
    its agent, the dialled number)."""
    agent_id: int | None = None
    """Admitted: the agent that answers it, when one was named or reached by number."""
    position: int | None = None
    """Queued (``reason`` :data:`QUEUED`): callers ahead of this one, 0 at the head."""

    @property
    def queued(self) -> bool:
        return self.reason == QUEUED


@dataclass(frozen=True)
class _CallQuota:
    """What the lease needs, read inside the session (rows expire when it commits)."""

    organisation_id: int
    max_concurrent_calls: int
    number_cap: int | None
    agent_id: int | None


class AdmissionController:
    """Admits calls against their organisation's plan, holding their concurrency leases.

    ``clock`` (unix seconds) decides the calendar month (UTC) whose minutes count.
    Without a ``notifier``, refusals still record their notification rows, with no
    webhook. Thread-safe: every ``admit`` uses its own database session.
    """

    def __init__(
        self,
        engine: Engine,
        leases: LeaseStore,
        *,
        lease_ttl_s: float = 30.0,
        notifier: Notifier | None = None,
        clock: Callable[[], float] = time.time,
        hold_queue: HoldQueue | None = None,
        hold_queue_max: int = HOLD_QUEUE_MAX,
    ) -> None:
        if not lease_ttl_s > 0:
            raise ValueError(f"lease_ttl_s must be positive, got {lease_ttl_s}")
        if hold_queue_max < 0:
            raise ValueError(f"hold_queue_max cannot be negative, got {hold_queue_max}")
        self._engine = engine
        self._leases = leases
        self._hold = hold_queue or MemoryHoldQueue()
        self._hold_max = hold_queue_max
        self._lease_ttl_s = lease_ttl_s
        self._notifier = notifier or Notifier(webhook_url=None, webhook_secret=None)
        self._clock = clock

    @property
    def lease_ttl_s(self) -> float:
        """How long a lease lives without a heartbeat; heartbeat well within it."""
        return self._lease_ttl_s

    def admit(self, req: AdmissionRequest) -> Admission:
        """Admit the call and take its lease (:func:`lease_id_for` its organisation and
        ``req.call_id``), or refuse it.

        Admitting a call whose lease is still live admits it again (a retried request)
        and takes no second slot, even if its organisation ran out of minutes or balance
        meanwhile: quotas refuse new calls, never live ones. A refusal for minutes or
        balance notifies the organisation's admins once per month. Raises the database's
        or the lease store's errors: the caller decides whether to fail open.
        """
        now = datetime.fromtimestamp(self._clock(), UTC)
        with session_scope(self._engine) as session:
            verdict = self._check_quota(session, req, now)
        if isinstance(verdict, Admission):
            return verdict
        scopes = [LeaseScope(f"org:{verdict.organisation_id}", verdict.max_concurrent_calls)]
        if req.dialled_number is not None and verdict.number_cap is not None:
            scopes.append(LeaseScope(f"number:{req.dialled_number}", verdict.number_cap))
        if req.resume:
            # a live call is counted, never refused: no limit holds it out of its scopes
            scopes = [LeaseScope(scope.key, UNLIMITED) for scope in scopes]
        lease_id = lease_id_for(verdict.organisation_id, req.call_id)
        queue = f"org:{verdict.organisation_id}"
        if req.hold and not req.resume:
            # a waiting caller tries for a slot only at the head of the queue: in order
            position = self._hold.take_turn(queue, req.call_id, self._hold_max, HOLD_ENTRY_TTL_S)
            if position is None:
                return self._refuse(req, HOLD_QUEUE_FULL, verdict.organisation_id)
            if position > 0:
                return self._queued(req, verdict, position)
        elif (
            not req.resume
            and self._hold.length(queue) > 0
            and not self._leases.heartbeat(lease_id, self._lease_ttl_s)
        ):
            # callers are waiting: a slot that frees is theirs (a live call retrying its
            # admission keeps its own)
            return self._refuse(req, CONCURRENT_CALLS_LIMIT, verdict.organisation_id)
        full_scope = self._leases.acquire(lease_id, scopes, self._lease_ttl_s)
        if full_scope is None:
            if req.hold:
                self._hold.leave(queue, req.call_id)
            return self._admitted(req, verdict)
        if req.hold and not req.resume:
            return self._queued(req, verdict, 0)
        reason = CONCURRENT_CALLS_LIMIT if full_scope == scopes[0].key else NUMBER_CONCURRENCY_LIMIT
        return self._refuse(req, reason, verdict.organisation_id)

    def leave_queue(self, organisation_id: int, call_id: str) -> None:
        """A waiting caller gave up (hung up, or waited too long); idempotent."""
        self._hold.leave(f"org:{organisation_id}", call_id)

    def _queued(self, req: AdmissionRequest, quota: _CallQuota, position: int) -> Admission:
        logger.info(
            "call queued",
            extra={
                "call_id": req.call_id,
                "organisation_id": quota.organisation_id,
                "position": position,
            },
        )
        return Admission(
            False, None, QUEUED, HOLD_MESSAGE, quota.organisation_id, quota.agent_id, position
        )

    def heartbeat(self, lease_id: str) -> bool:
        """Keep a live call's lease for another ``lease_ttl_s``; False if it expired (the
        slot may be taken by now: the worker should admit the call again)."""
        return self._leases.heartbeat(lease_id, self._lease_ttl_s)

    def release(self, lease_id: str) -> None:
        """Free the call's slots at its end; idempotent."""
        self._leases.release(lease_id)

    def _check_quota(
        self, session: Session, req: AdmissionRequest, now: datetime
    ) -> _CallQuota | Admission:
        """The call's concurrency quota if minutes and balance allow it, else the decision
        (a refusal, or the admission of a call that is already live)."""
        resolved = _resolve(session, req)
        if resolved is None:
            return self._refuse(req, UNKNOWN_AGENT, None)
        organisation, agent = resolved
        assert organisation.id is not None
        plan = session.get(Plan, organisation.plan_id)
        assert plan is not None  # organisations.plan_id is a foreign key
        number_cap = agent.max_concurrent_calls_per_number if agent is not None else None
        agent_id = agent.id if agent is not None else None
        quota = _CallQuota(organisation.id, plan.max_concurrent_calls, number_cap, agent_id)
        if req.resume:
            return quota
        period = f"{now.year:04d}-{now.month:02d}"
        if _call_seconds_in_month(session, organisation.id, now) >= plan.monthly_minutes * 60:
            return self._refuse_unless_live(
                session,
                req,
                quota,
                MONTHLY_MINUTES_EXHAUSTED,
                period,
                f"{organisation.name} has used all {plan.monthly_minutes} call minutes of "
                f"its plan for {period}. New calls are refused until next month or a plan "
                "upgrade; calls in progress continue.",
            )
        if plan.prepaid and organisation.balance_minor <= 0:
            return self._refuse_unless_live(
                session,
                req,
                quota,
                BALANCE_EXHAUSTED,
                period,
                f"The prepaid balance of {organisation.name} is used up. New calls are "
                "refused until it is topped up; calls in progress continue.",
            )
        return quota

    def _refuse_unless_live(
        self,
        session: Session,
        req: AdmissionRequest,
        quota: _CallQuota,
        reason: str,
        period: str,
        admin_message: str,
    ) -> Admission:
        # only here, on the rare refusal path, is a live lease looked for: a retried
        # admission of a running call must not refuse it (nor notify about it)
        organisation_id = quota.organisation_id
        if self._leases.heartbeat(lease_id_for(organisation_id, req.call_id), self._lease_ttl_s):
            return self._admitted(req, quota)
        self._notifier.notify_admins_once(session, organisation_id, reason, period, admin_message)
        return self._refuse(req, reason, organisation_id)

    def _admitted(self, req: AdmissionRequest, quota: _CallQuota) -> Admission:
        organisation_id = quota.organisation_id
        logger.debug(
            "call admitted", extra={"call_id": req.call_id, "organisation_id": organisation_id}
        )
        lease_id = lease_id_for(organisation_id, req.call_id)
        return Admission(True, lease_id, None, ADMITTED_MESSAGE, organisation_id, quota.agent_id)

    def _refuse(self, req: AdmissionRequest, reason: str, organisation_id: int | None) -> Admission:
        # no dialled number here: numbers are never logged unmasked
        logger.info(
            "call refused",
            extra={
                "call_id": req.call_id,
                "agent_id": req.agent_id,
                "organisation_id": organisation_id or req.organisation_id,
                "reason": reason,
            },
        )
        return Admission(False, None, reason, CALLER_MESSAGES[reason])


def _resolve(session: Session, req: AdmissionRequest) -> tuple[Organisation, Agent | None] | None:
    """The call's organisation and agent, or None if they do not exist or disagree."""
    agent: Agent | None = None
    if req.agent_id is not None:
        agent = session.get(Agent, req.agent_id)
        if agent is None:
            return None
    elif req.dialled_number is not None:
        agent = session.exec(select(Agent).where(Agent.phone_number == req.dialled_number)).first()
        if agent is None:
            return None
    organisation_id = agent.organisation_id if agent is not None else req.organisation_id
    if organisation_id is None:
        return None
    # a request naming both must not bill one organisation for another's agent
    if req.organisation_id is not None and req.organisation_id != organisation_id:
        return None
    organisation = session.get(Organisation, organisation_id)
    if organisation is None:
        return None
    return organisation, agent


def _call_seconds_in_month(session: Session, organisation_id: int, now: datetime) -> int:
    """Call seconds the organisation used in ``now``'s calendar month (UTC)."""
    month_start = datetime(now.year, now.month, 1, tzinfo=UTC)
    next_month = datetime(now.year + now.month // 12, now.month % 12 + 1, 1, tzinfo=UTC)
    total = session.exec(
        select(func.coalesce(func.sum(UsageRecord.quantity), 0)).where(
            UsageRecord.organisation_id == organisation_id,
            UsageRecord.kind == UsageKind.call_seconds,
            col(UsageRecord.recorded_at) >= month_start,
            col(UsageRecord.recorded_at) < next_month,
        )
    ).one()
    return int(total)


def check_can_create_agent(session: Session, organisation_id: int) -> None:
    """Return if the organisation may add one more agent under its plan's ``max_agents``.

    Call it in the transaction that inserts the agent: it locks the organisation's row
    (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite transactions here are serialised
    anyway), so concurrent creations cannot both pass the count. Raises
    :class:`QuotaExceeded` with reason ``"max_agents"`` at the limit, and LookupError for
    an organisation that does not exist.
    """
    organisation = session.exec(
        select(Organisation).where(Organisation.id == organisation_id).with_for_update()
    ).first()
    if organisation is None:
        raise LookupError(f"organisation {organisation_id} does not exist")
    plan = session.get(Plan, organisation.plan_id)
    assert plan is not None  # organisations.plan_id is a foreign key
    agents = session.exec(
        select(func.count()).select_from(Agent).where(Agent.organisation_id == organisation_id)
    ).one()
    if agents >= plan.max_agents:
        raise QuotaExceeded(
            MAX_AGENTS,
            f"Your plan allows {plan.max_agents} agents; remove one or upgrade the plan.",
        )
