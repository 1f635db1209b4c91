"""Calls: INVITE sessions (``sipcore.session``) wired to the endpoint's transactions; the sessions' shell.

:class:`UserAgent` sits on an :class:`~sipcore.endpoint.Endpoint` (it becomes the endpoint's request handler
and shares its one timer) and keeps one pure :class:`~sipcore.session.InviteSession` per call leg:

* ``ua.invite(...)`` starts an outgoing leg (:class:`OutgoingCall`); ``await call.wait_answered()`` gives the
  2xx or raises :class:`CallFailed`. With ``credentials`` a 401/407 is answered with digest: once per
  realm (a proxy and a server may both challenge), again when the nonce went stale, at most
  ``MAX_AUTH_RETRIES`` times.
* An incoming INVITE reaches the application's handler as an ``IncomingRequest``; ``ua.accept(incoming)``
  makes it an :class:`IncomingCall` to ``ring``, ``answer`` or ``reject``.
* Every fact a session reports (``Answered``, ``Confirmed``, ``Cancelled``, ``ReinviteReceived``,
  ``DialogRequestReceived``, ``Terminated`` …) is put on the call's queue as ``(call, event)``; several calls
  may share one queue (a B2BUA reads both legs of a call from one). ``call.ended`` resolves with the
  ``Terminated`` event.

The wiring, in one place: a session's ``SendRequest`` becomes a client transaction on the leg's flow (its
responses, RFC 6026 2xx retransmissions and other forks' 2xx included, go back to that session);
``SendCancel`` is the endpoint's ``cancel`` (with the call's ``Reason``); ``SendResponse`` answers the server
transaction of the request by top Via branch and CSeq method; ``SendDirect`` sends an ACK straight on the
flow, or a 2xx again on its INVITE's transaction. Requests with a To tag are routed to their call by
(Call-ID, local tag) — our tag is in their To — and answered 481 when no call has it; a call leaves the table
on ``Terminated``. Everything runs in the endpoint's callbacks or the caller's task: no task per message.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import random
from collections.abc import Awaitable, Callable, Iterable
from functools import partial
from typing import Final

import attrs

from .auth import answer_challenge, choose_challenge
from .endpoint import Endpoint, IncomingRequest, OutgoingRequest, RequestHandler
from .errors import SipError
from .headers import Challenge
from .message import Request, Response
from .session import (
    CONFIRMING_STATES,
    DEFAULT_ALLOW,
    EARLY_STATES,
    ESTABLISHED_STATES,
    Answered,
    Cancelled,
    Confirmed,
    InviteSession,
    ReinviteConfirmed,
    Rejected,
    Role,
    SendCancel,
    SendDirect,
    SendRequest,
    SendResponse,
    SessionError,
    SessionEvent,
    SessionState,
    SessionTimers,
    Terminated,
    TransactionFailure,
)
from .transaction import TimedOut, TransportFailed
from .transport import Flow
from .uri import NameAddr, SipUri, Uri, parse_name_addr, parse_uri

__all__ = ["Call", "CallEvent", "CallFailed", "CallQueue", "IncomingCall", "OutgoingCall", "UserAgent"]

log = logging.getLogger(__name__)

CallEvent = tuple["Call", SessionEvent]
CallQueue = asyncio.Queue[CallEvent]


class CallFailed(SipError):
    """A call ended before it was answered: ``status`` (408 for a timeout, 487 when cancelled) and the final
    response, if one came."""

    def __init__(self, status: int, response: Response | None = None, reason: str = "") -> None:
        super().__init__(reason or (f"{status} {response.reason}" if response is not None else str(status)))
        self.status = status
        self.response = response


@attrs.frozen
class _InviteArgs:
    """What an outgoing call's INVITE was made of (an authenticated retry sends it again)."""

    request_uri: Uri
    to: NameAddr | str
    from_: NameAddr
    body: bytes
    content_type: str | None
    headers: tuple[tuple[str, str], ...]
    route: tuple[NameAddr | str, ...] = ()


def _is_sips(uri: Uri) -> bool:
    """A SIPS Request-URI: the dialog's Contact must be SIPS too (RFC 3261 §12.1.1)."""
    return isinstance(uri, SipUri) and uri.is_secure


def _ignore(request: Request) -> None:
    """What a finished call does with a late ACK or CANCEL of its INVITE (its session would ignore it)."""


def _settle(future: asyncio.Future[Response], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
        future.exception()  # retrieved: a call nobody waits on is no error


class Call:
    """One call leg: an INVITE session on one flow (see the module docstring)."""

    def __init__(self, ua: UserAgent, session: InviteSession, flow: Flow, queue: CallQueue | None) -> None:
        self.ua = ua
        self.session = session
        self.flow = flow
        #: ``(call, event)`` for every fact the session reports, in order.
        self.events: CallQueue = queue if queue is not None else asyncio.Queue()
        loop = asyncio.get_running_loop()
        #: The 2xx (UAC: received; UAS: sent); raises :class:`CallFailed` if the call ends before one.
        self.answered: asyncio.Future[Response] = loop.create_future()
        #: Resolves with the session's last event.
        self.ended: asyncio.Future[Terminated] = loop.create_future()
        self._server: dict[tuple[str | None, str], IncomingRequest] = {}
        self._client: dict[tuple[int, str], OutgoingRequest] = {}
        self._cancel_headers: tuple[tuple[str, str], ...] = ()
        self._timer_at: float | None = None
        self._key: tuple[str, str] | None = None

    # --------------------------------------------------------------------------------------- reading

    @property
    def call_id(self) -> str | None:
        return self.session.call_id

    @property
    def local_tag(self) -> str | None:
        return self.session.local_tag

    @property
    def state(self) -> SessionState:
        return self.session.state

    @property
    def is_early(self) -> bool:
        """A call we placed that has no final answer yet: hanging up means CANCEL."""
        return self.session.state in EARLY_STATES

    @property
    def unanswered(self) -> bool:
        """A call to us that we have not answered (nor rejected) yet."""
        return self.session.state is SessionState.INCOMING

    @property
    def can_send_requests(self) -> bool:
        """The INVITE is complete and no BYE is under way: in-dialog requests (re-INVITE, INFO …) may go."""
        return self.session.state in ESTABLISHED_STATES

    @property
    def confirming(self) -> bool:
        """Answered with a 2xx whose ACK is not through yet: in-dialog requests must wait for it."""
        return self.session.state in CONFIRMING_STATES

    @property
    def terminated(self) -> bool:
        return self.session.terminated

    @property
    def invite(self) -> Request | None:
        """The initial INVITE (sent or received)."""
        return self.session.invite

    async def wait_answered(self) -> Response:
        """The 2xx; raises :class:`CallFailed` when the call ended without one."""
        return await asyncio.shield(self.answered)

    async def wait_ended(self) -> Terminated:
        return await asyncio.shield(self.ended)

    # -------------------------------------------------------------------------------------- commands

    def bye(self, *, headers: Iterable[tuple[str, str]] = ()) -> None:
        """Hang up (RFC 3261 §15): BYE, or CANCEL before the answer (UAC); repeated hang-ups do nothing."""
        extra = tuple(headers)
        self._command(lambda now: self.session.bye(now=now, headers=extra))

    def reinvite(
        self, *, body: bytes = b"", content_type: str | None = None, headers: Iterable[tuple[str, str]] = ()
    ) -> None:
        """Send a re-INVITE (§14.1); the outcome comes as ``ReinviteAnswered`` or ``ReinviteFailed``."""
        extra = tuple(headers)
        self._command(
            lambda now: self.session.reinvite(now=now, body=body, content_type=content_type, headers=extra)
        )

    def answer_reinvite(
        self,
        *,
        body: bytes = b"",
        content_type: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
        status: int = 200,
    ) -> None:
        """Accept the peer's pending re-INVITE (after ``ReinviteReceived``)."""
        extra = tuple(headers)
        self._command(
            lambda now: self.session.answer(
                now=now, body=body, content_type=content_type, headers=extra, status=status
            )
        )

    def reject_reinvite(
        self, status: int, *, reason: str | None = None, headers: Iterable[tuple[str, str]] = ()
    ) -> None:
        """Refuse the peer's pending re-INVITE (488, 491 …); the session stays as it was."""
        extra = tuple(headers)
        self._command(lambda now: self.session.reject(status, now=now, reason=reason, headers=extra))

    def ack(self, *, body: bytes = b"", content_type: str | None = None) -> None:
        """Send the ACK carrying the answer a 2xx's offer asked for (after ``answer_owed``)."""
        self._command(lambda now: self.session.ack(now=now, body=body, content_type=content_type))

    def send_request(
        self,
        method: str,
        *,
        body: bytes = b"",
        content_type: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
    ) -> Request:
        """Send INFO, UPDATE, OPTIONS … in the dialog; the answer comes as ``DialogResponseReceived``."""
        extra = tuple(headers)
        sent: list[Request] = []
        self._command(
            lambda now: sent.append(
                self.session.send_request(
                    method, now=now, body=body, content_type=content_type, headers=extra
                )
            )
        )
        return sent[0]

    def respond(
        self,
        request: Request,
        status: int,
        *,
        reason: str | None = None,
        body: bytes = b"",
        content_type: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        """Answer a request announced by ``DialogRequestReceived``."""
        extra = tuple(headers)
        self._command(
            lambda now: self.session.respond(
                request, status, now=now, reason=reason, body=body, content_type=content_type, headers=extra
            )
        )

    def _command(self, command: Callable[[float], None]) -> None:
        self.ua._command(self, command)

    # -------------------------------------------------------------------------------- from the UA

    def _record(self, event: SessionEvent) -> None:
        """Keep the futures in step with the session's facts."""
        if isinstance(event, Answered) and not self.answered.done():
            self.answered.set_result(event.response)
        elif isinstance(event, Rejected):
            _settle(self.answered, CallFailed(event.status, event.response))
        elif isinstance(event, Cancelled):
            response = event.message if isinstance(event.message, Response) else None
            _settle(self.answered, CallFailed(487, response, "cancelled"))
        elif isinstance(event, Terminated):
            _settle(self.answered, CallFailed(event.status or 487, None, f"ended: {event.reason.value}"))
            if not self.ended.done():
                self.ended.set_result(event)

    def _release(self) -> None:
        """The session ended (it ignores whatever still arrives): drop the links from this call's requests
        back to it. Those reference cycles outlive the call by 64*T1 in the transactions and then only the
        cyclic garbage collector could free the leg (CPS benchmark: ~220 objects per call piled up)."""
        for outgoing in self._client.values():
            outgoing.on_provisional = outgoing.on_response = outgoing.on_failure = None
        self._client.clear()
        incoming = [*self._server.values(), *((self.incoming,) if isinstance(self, IncomingCall) else ())]
        for request in incoming:
            if request.taken_over:
                request.take_over(on_ack=_ignore, on_cancel=_ignore)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.call_id} {self.state.value}>"


class OutgoingCall(Call):
    """A leg we called (UAC)."""

    def __init__(
        self,
        ua: UserAgent,
        session: InviteSession,
        flow: Flow,
        queue: CallQueue | None,
        credentials: tuple[str, str] | None,
        args: _InviteArgs,
    ) -> None:
        super().__init__(ua, session, flow, queue)
        self.credentials = credentials
        self._args = args
        self._auth_retry: Response | None = None
        #: Authorization headers sent so far, by (header name, realm): kept on later retries (a proxy's
        #: 407 and the trunk's 401 can both challenge one INVITE).
        self._auth_answers: dict[tuple[str, str], tuple[Challenge, int]] = {}
        self._auth_attempts = 0

    def cancel(self, *, headers: Iterable[tuple[str, str]] = ()) -> None:
        """Give up before the answer (RFC 3261 §9.1); ``headers`` go into the CANCEL (``Reason``, RFC 3326).

        A 2xx that crosses the CANCEL is ACKed and ended with BYE by the session."""
        self._cancel_headers = tuple(headers)
        self._command(lambda now: self.session.cancel(now=now))


class IncomingCall(Call):
    """A leg that called us (UAS): ``ring``, then ``answer`` or ``reject``."""

    def __init__(
        self, ua: UserAgent, session: InviteSession, incoming: IncomingRequest, queue: CallQueue | None
    ) -> None:
        super().__init__(ua, session, incoming.flow, queue)
        self.incoming = incoming

    @property
    def request(self) -> Request:
        return self.incoming.request

    def ring(
        self,
        status: int = 180,
        *,
        reason: str | None = None,
        body: bytes = b"",
        content_type: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        extra = tuple(headers)
        self._command(
            lambda now: self.session.ringing(
                now=now, status=status, reason=reason, body=body, content_type=content_type, headers=extra
            )
        )

    def answer(
        self,
        *,
        body: bytes = b"",
        content_type: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
        status: int = 200,
    ) -> None:
        """Accept with a 2xx; it is retransmitted until the ACK (``Confirmed``) or 64*T1 (then BYE)."""
        extra = tuple(headers)
        self._command(
            lambda now: self.session.answer(
                now=now, body=body, content_type=content_type, headers=extra, status=status
            )
        )

    def reject(
        self,
        status: int,
        *,
        reason: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        content_type: str | None = None,
    ) -> None:
        extra = tuple(headers)
        self._command(
            lambda now: self.session.reject(
                status, now=now, reason=reason, headers=extra, body=body, content_type=content_type
            )
        )


class UserAgent:
    """INVITE sessions over one endpoint (see the module docstring).

    ``handler`` gets every request that is not inside a dialog (INVITE, REGISTER, OPTIONS …); without one,
    OPTIONS is answered and everything else gets 501 (INVITE 480). ``rng`` feeds the session's random
    choices (491 back-off, Retry-After).
    """

    def __init__(
        self,
        endpoint: Endpoint,
        handler: RequestHandler | None = None,
        *,
        timers: SessionTimers | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.handler = handler
        #: The Allow header of the INVITEs and 2xx of sessions started from now on.
        self.allow = DEFAULT_ALLOW
        self.timers = timers or SessionTimers(t1=endpoint.timers.t1, t2=endpoint.timers.t2)
        self._rng = rng or random.Random()
        self._calls: dict[tuple[str, str], Call] = {}
        self._heap: list[tuple[float, int, Call]] = []
        self._seq = itertools.count()
        endpoint.handler = self._on_request
        endpoint.add_timer_user(self)

    @property
    def calls(self) -> tuple[Call, ...]:
        """The live calls."""
        return tuple(self._calls.values())

    def close(self) -> None:
        """Stop driving sessions (the endpoint stays); live calls are dropped without BYE."""
        self.endpoint.remove_timer_user(self)
        self._calls.clear()
        self._heap.clear()

    # ------------------------------------------------------------------------------------ outgoing

    def invite(
        self,
        uri: Uri | str,
        flow: Flow,
        *,
        from_: NameAddr | str,
        to: NameAddr | str,
        body: bytes = b"",
        content_type: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
        call_id: str | None = None,
        credentials: tuple[str, str] | None = None,
        queue: CallQueue | None = None,
        route: Iterable[NameAddr | str] = (),
    ) -> OutgoingCall:
        """Call ``uri`` along ``flow`` (an empty ``body`` makes an offerless INVITE). ``credentials``
        (username, password) answer one 401/407 challenge. ``route`` is a preloaded route set (a registered
        phone's Path, RFC 3327), sent as Route headers; ``flow`` then leads to its first hop."""
        from_party = parse_name_addr(from_) if isinstance(from_, str) else from_
        target = parse_uri(uri) if isinstance(uri, str) else uri
        session = self._session(Role.UAC, flow, from_party, sips=_is_sips(target))
        args = _InviteArgs(
            target,
            to,
            from_party,
            body,
            content_type,
            tuple(headers),
            tuple(route),
        )
        call = OutgoingCall(self, session, flow, queue, credentials, args)
        self._start_invite(call, session, call_id=call_id, extra=())
        return call

    def _start_invite(
        self,
        call: OutgoingCall,
        session: InviteSession,
        *,
        call_id: str | None,
        extra: tuple[tuple[str, str], ...],
    ) -> None:
        args = call._args
        invite = session.send_invite(
            request_uri=args.request_uri,
            to=args.to,
            from_=args.from_,
            now=self.endpoint.now,
            body=args.body,
            content_type=args.content_type,
            headers=(*args.headers, *extra),
            route=args.route,
            call_id=call_id,
        )
        call._key = (invite.call_id, session.local_tag or "")
        self._calls[call._key] = call
        self._pump(call, session)
        self.endpoint.reschedule()

    def _retry_with_credentials(self, call: OutgoingCall, challenge_response: Response) -> bool:
        """After a 401/407: a new INVITE with the same Call-ID and From tag, CSeq + 1 (§22.2)."""
        assert call.credentials is not None
        old = call.session.invite
        assert old is not None
        proxy = challenge_response.status == 407
        challenge = choose_challenge(
            challenge_response.proxy_authenticate if proxy else challenge_response.www_authenticate
        )
        if challenge is None:
            return False
        username, password = call.credentials
        header = "Proxy-Authorization" if proxy else "Authorization"
        call._auth_answers[(header, challenge.param("realm") or "")] = (challenge, 0)
        extra: list[tuple[str, str]] = []
        for key, (answered, uses) in call._auth_answers.items():
            # A nonce used again is counted up (nc), as the challenger's replay check expects.
            call._auth_answers[key] = (answered, uses + 1)
            creds = answer_challenge(
                answered,
                "INVITE",
                str(old.uri),
                username,
                password,
                cnonce=self.endpoint.new_tag(),
                nc=uses + 1,
            )
            extra.append((key[0], str(creds)))
        call._auth_attempts += 1
        tag = old.from_.tag or self.endpoint.new_tag()
        session = self._session(
            Role.UAC,
            call.flow,
            call._args.from_,
            tag=tag,
            initial_cseq=old.cseq.seq + 1,
            sips=_is_sips(call._args.request_uri),
        )
        call.session = session
        call._client.clear()
        self._start_invite(call, session, call_id=old.call_id, extra=tuple(extra))
        return True

    # ------------------------------------------------------------------------------------ incoming

    def accept(self, incoming: IncomingRequest, *, queue: CallQueue | None = None) -> IncomingCall:
        """Make an incoming INVITE (without To tag) a call to answer. Raises :class:`CallFailed` (and has
        answered it) when the INVITE cannot start a session (no Contact: 400)."""
        request = incoming.request
        if request.method != "INVITE" or request.to.tag is not None:
            raise SessionError(f"accept() takes an initial INVITE, not {request.method} with To tag")
        session = self._session(Role.UAS, incoming.flow, request.to, sips=_is_sips(request.uri))
        call = IncomingCall(self, session, incoming, queue)
        call._server[(request.branch, "INVITE")] = incoming
        incoming.take_over(on_ack=partial(self._ack_received, call), on_cancel=partial(self._feed, call))
        try:
            session.receive_request(request, self.endpoint.now)
        except SessionError as exc:
            if incoming.final is None:
                incoming.respond(exc.status or 500)
            raise CallFailed(exc.status or 500, None, str(exc)) from exc
        call._key = (request.call_id, session.local_tag or "")
        self._calls[call._key] = call
        self._pump(call, session)
        self.endpoint.reschedule()
        return call

    def _on_request(self, incoming: IncomingRequest) -> Awaitable[None] | None:
        request = incoming.request
        tag = request.to.tag
        if tag is not None:
            call = self._calls.get((request.call_id, tag))
            if call is None:
                incoming.respond(481)
                return None
            call._server[(request.branch, request.method)] = incoming
            if request.method == "INVITE":
                incoming.take_over(
                    on_ack=partial(self._ack_received, call), on_cancel=partial(self._feed, call)
                )
            self._feed(call, request, incoming)
            return None
        if self.handler is not None:
            return self.handler(incoming)
        if request.method == "OPTIONS":
            self.endpoint.answer_options(incoming)
        else:
            incoming.respond(480 if request.method == "INVITE" else 501)
        return None

    def _feed(self, call: Call, request: Request, incoming: IncomingRequest | None = None) -> None:
        """A request for ``call``'s session (in-dialog request, ACK, or the CANCEL of its INVITE)."""
        session = call.session
        try:
            session.receive_request(request, self.endpoint.now)
        except SessionError as exc:
            if incoming is not None and incoming.final is None:
                incoming.respond(exc.status or 500)
            else:
                log.debug("%s: %s", call, exc)
        self._pump(call, session)

    def _ack_received(self, call: Call, ack: Request) -> None:
        self._feed(call, ack)

    # ---------------------------------------------------------------------------- from transactions

    def _response(self, call: Call, session: InviteSession, response: Response) -> None:
        try:
            session.receive_response(response, self.endpoint.now)
        except SessionError as exc:
            log.debug("%s: response %s dropped: %s", call, response.status, exc)
        self._pump(call, session)

    def _failure(
        self, call: Call, session: InviteSession, request: Request, event: TimedOut | TransportFailed
    ) -> None:
        kind = TransactionFailure.TIMEOUT if isinstance(event, TimedOut) else TransactionFailure.TRANSPORT
        try:
            session.transaction_failed(request, kind, self.endpoint.now)
        except SessionError as exc:
            log.debug("%s: failure of %s dropped: %s", call, request.method, exc)
        self._pump(call, session)

    # ------------------------------------------------------------------------------------ the pump

    def _command(self, call: Call, command: Callable[[float], None]) -> None:
        session = call.session
        try:
            command(self.endpoint.now)
        finally:
            self._pump(call, session)
            self.endpoint.reschedule()

    def _pump(self, call: Call, session: InviteSession) -> None:
        """Carry out what ``session`` asks for and publish what it reports."""
        while (event := session.next_event()) is not None:
            try:
                self._carry_out(call, session, event)
            except Exception:
                log.exception("%s: handling %r failed", call, event)
        if session is call.session:
            self._schedule(call)

    def _carry_out(self, call: Call, session: InviteSession, event: SessionEvent) -> None:
        endpoint = self.endpoint
        if isinstance(event, SendRequest):
            request = event.request
            outgoing = endpoint.send_request(
                request,
                call.flow,
                on_response=partial(self._response, call, session),
                on_failure=partial(self._failure, call, session, request),
            )
            if request.method == "INVITE":
                call._client[(request.cseq.seq, "INVITE")] = outgoing
        elif isinstance(event, SendCancel):
            pending = call._client.get((event.invite.cseq.seq, "INVITE"))
            if pending is not None:
                endpoint.cancel(pending, headers=call._cancel_headers)
        elif isinstance(event, SendResponse):
            self._send_response(call, event.response)
        elif isinstance(event, SendDirect):
            message = event.message
            if isinstance(message, Request):
                endpoint.send_ack(message, call.flow)
            else:
                incoming = call._server.get((message.branch, message.cseq.method))
                if incoming is not None:
                    incoming.retransmit(message)
        else:
            self._publish(call, session, event)

    def _send_response(self, call: Call, response: Response) -> None:
        key = (response.branch, response.cseq.method)
        incoming = call._server.get(key)
        if incoming is None or incoming.final is not None:
            log.debug("%s: no server transaction for %s %s", call, response.status, response.cseq)
            return
        incoming.send(response)
        if response.status >= 200 and (response.cseq.method != "INVITE" or response.status >= 300):
            del call._server[key]
        first = isinstance(call, IncomingCall) and incoming is call.incoming
        if first and 200 <= response.status < 300 and not call.answered.done():
            call.answered.set_result(response)

    def _publish(self, call: Call, session: InviteSession, event: SessionEvent) -> None:
        if isinstance(call, OutgoingCall) and session is not call.session:
            return  # a session replaced by its authenticated retry
        if (
            isinstance(call, OutgoingCall)
            and isinstance(event, Rejected)
            and event.status in (401, 407)
            and event.response is not None
            and call.credentials is not None
            and call._auth_attempts < MAX_AUTH_RETRIES
            and _may_answer(call._auth_answers, event.response)
        ):
            call._auth_retry = event.response
            return
        if isinstance(event, Terminated):
            if call._key is not None and self._calls.get(call._key) is call:
                del self._calls[call._key]
            if isinstance(call, OutgoingCall) and call._auth_retry is not None:
                challenge, call._auth_retry = call._auth_retry, None
                if self._retry_with_credentials(call, challenge):
                    return
                call.events.put_nowait((call, Rejected(challenge.status, challenge)))
                call._record(Rejected(challenge.status, challenge))
            call._release()
        if isinstance(event, Confirmed | ReinviteConfirmed):
            for key in [k for k, v in call._server.items() if k[1] == "INVITE" and v.final is not None]:
                del call._server[key]
        call._record(event)
        call.events.put_nowait((call, event))

    # ----------------------------------------------------------------------------------- sessions

    def _session(
        self,
        role: Role,
        flow: Flow,
        who: NameAddr,
        *,
        tag: str | None = None,
        initial_cseq: int = 1,
        sips: bool = False,
    ) -> InviteSession:
        endpoint = self.endpoint
        make_tag = endpoint.new_tag
        if tag is not None:
            tags = iter((tag,))

            def make_tag() -> str:
                return next(tags, None) or endpoint.new_tag()

        contact = NameAddr(None, endpoint.contact_uri(flow, who, sips=sips))
        return InviteSession(
            role,
            contact=contact,
            via=endpoint.make_via(flow),
            make_tag=make_tag,
            make_branch=endpoint.new_branch,
            make_call_id=endpoint.new_call_id,
            rand=self._rng.random,
            timers=self.timers,
            initial_cseq=initial_cseq,
            allow=self.allow,
        )

    # -------------------------------------------------------------------------------------- timer

    def _schedule(self, call: Call) -> None:
        at = call.session.get_timer()
        if at == call._timer_at:
            return
        call._timer_at = at
        if at is not None:
            heapq.heappush(self._heap, (at, next(self._seq), call))

    def get_timer(self) -> float | None:
        heap = self._heap
        while heap and heap[0][2]._timer_at != heap[0][0]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def handle_timer(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now:
            at, _, call = heapq.heappop(heap)
            if call._timer_at != at:
                continue
            call._timer_at = None
            session = call.session
            try:
                session.handle_timer(now)
            except SessionError:
                log.exception("%s: session timer failed", call)
            self._pump(call, session)


#: Authenticated retries of one INVITE at most (a proxy's and a server's challenge, then a stale nonce).
MAX_AUTH_RETRIES: Final = 3


def _may_answer(answered: dict[tuple[str, str], tuple[Challenge, int]], response: Response) -> bool:
    """Whether a 401/407 is worth another authenticated INVITE: a realm not answered yet, or the same realm
    saying our nonce went stale (RFC 7616 §3.3) — not a plain refusal of credentials already sent."""
    proxy = response.status == 407
    challenge = choose_challenge(response.proxy_authenticate if proxy else response.www_authenticate)
    if challenge is None:
        return True  # the retry finds no challenge and reports the rejection
    header = "Proxy-Authorization" if proxy else "Authorization"
    if (header, challenge.param("realm") or "") not in answered:
        return True
    return (challenge.param("stale") or "").lower() == "true"
