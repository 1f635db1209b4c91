"""Dialogs and dialog sets (RFC 3261 §12, §13.2.2.4): the state two user agents share between transactions.

A :class:`Dialog` holds what §12 calls dialog state: the dialog ID (Call-ID, local tag, remote tag), the local
and remote sequence numbers, the local and remote URI, the remote target, the route set and the secure flag.
It builds requests inside the dialog (§12.2.1.1, including the strict-router case), the ACK for a 2xx
(§13.2.2.4) and checks requests arriving inside it (§12.2.2).

A :class:`DialogSet` is the UAC's view of one INVITE: every 1xx or 2xx with a distinct To tag (a fork) is a
dialog of its own, keyed by (Call-ID, local tag) with the remote tag telling the forks apart. The first 2xx
wins; a 2xx from another fork is acknowledged and must be ended with BYE (§13.2.2.4, §15), which the set
reports as :class:`ForkAnswered` carrying the ACK and the BYE ready to send.

Everything here is pure (sans-I/O): no sockets, no clock, no randomness of its own. Branches come from an
injected callable; the Via sent-by comes from a template the caller supplies.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Iterable
from typing import Final

import attrs

from .errors import SipError, SipParseError
from .headers import MAX_UINT32, CSeq, Header, Via, header_key, parse_via
from .message import Request, Response, seed_parsed
from .uri import NameAddr, SipUri, Uri, parse_name_addr

__all__ = [
    "BRANCH_COOKIE",
    "MAX_FORWARDS",
    "TARGET_REFRESH_METHODS",
    "AnswerRetransmitted",
    "Dialog",
    "DialogConfirmed",
    "DialogError",
    "DialogId",
    "DialogSet",
    "DialogSetEvent",
    "DialogState",
    "EarlyDialogCreated",
    "EarlyDialogsTerminated",
    "ForkAnswered",
    "via_with_branch",
]

_log = logging.getLogger(__name__)

#: Max-Forwards of every request a user agent originates (RFC 3261 §8.1.1.6).
MAX_FORWARDS: Final = 70

#: Methods whose Contact replaces the remote target (RFC 3261 §12.2, RFC 3311 §5.1 for UPDATE).
TARGET_REFRESH_METHODS: Final = frozenset({"INVITE", "UPDATE"})

#: The magic cookie every RFC 3261 branch starts with (§8.1.1.7).
BRANCH_COOKIE: Final = "z9hG4bK"

#: URI parameters that are not allowed in a Request-URI (RFC 3261 §19.1.1, table 1).
_NOT_IN_REQUEST_URI: Final = frozenset({"method"})

#: Headers the ACK for a 2xx copies from the INVITE (RFC 3261 §13.2.2.4: "the same credentials").
_CREDENTIAL_HEADERS: Final = frozenset({"authorization", "proxy-authorization"})


class DialogError(SipError):
    """A dialog was used against RFC 3261 §12, or a request does not fit the dialog.

    ``status`` is the response to answer an offending request with (500 for an out-of-order CSeq, 481 for a
    request of another dialog); ``None`` when the error is the caller's bug rather than the peer's.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@attrs.frozen
class DialogId:
    """The dialog ID as seen from this side (RFC 3261 §12): Call-ID, local tag, remote tag.

    A tag may be ``None`` for an RFC 2543 peer that sends none (§12.1.1, §12.1.2).
    """

    call_id: str
    local_tag: str | None
    remote_tag: str | None


class DialogState(enum.Enum):
    """RFC 3261 §12: a dialog is early (made by a 1xx) or confirmed (by a 2xx); BYE or failure ends it."""

    __hash__ = object.__hash__  # members are singletons: identity hashing, without Enum's Python-level hash

    EARLY = "early"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


class _DialogInput(enum.Enum):
    __hash__ = object.__hash__  # members are singletons: identity hashing, without Enum's Python-level hash

    CONFIRM = "confirm"  # a 2xx was sent (UAS) or received (UAC) for the dialog-creating INVITE
    TERMINATE = "terminate"  # BYE, non-2xx final response, or an early dialog dropped after the fork window


#: The dialog's own small machine (RFC 3261 §12 intro, §12.3, §13.2.2.4). A repeated CONFIRM is legal: a
#: retransmitted 2xx reconfirms. TERMINATE is idempotent so every path that ends a call may say so.
_DIALOG_TRANSITIONS: Final[dict[tuple[DialogState, _DialogInput], DialogState]] = {
    (DialogState.EARLY, _DialogInput.CONFIRM): DialogState.CONFIRMED,
    (DialogState.CONFIRMED, _DialogInput.CONFIRM): DialogState.CONFIRMED,
    (DialogState.EARLY, _DialogInput.TERMINATE): DialogState.TERMINATED,
    (DialogState.CONFIRMED, _DialogInput.TERMINATE): DialogState.TERMINATED,
    (DialogState.TERMINATED, _DialogInput.TERMINATE): DialogState.TERMINATED,
}


def _as_via(via: Via | str) -> Via:
    return parse_via(via) if isinstance(via, str) else via


def _as_name_addr(value: NameAddr | str) -> NameAddr:
    return parse_name_addr(value) if isinstance(value, str) else value


def _without_tag(party: NameAddr) -> NameAddr:
    params = tuple(p for p in party.params if p[0] != "tag")
    return NameAddr(party.display_name, party.uri, params, party.bracketed)  # hot: not attrs.evolve


def _with_tag(party: NameAddr, tag: str | None) -> NameAddr:
    return party if tag is None else party.with_tag(tag)


def _branch(make_branch: Callable[[], str]) -> str:
    value = make_branch()
    return value if value.startswith(BRANCH_COOKIE) else BRANCH_COOKIE + value


def via_with_branch(via: Via | str, make_branch: Callable[[], str]) -> Via:
    """The Via template (sent-by, transport, e.g. ``;rport``) with a fresh branch from ``make_branch``.

    ``make_branch`` returns a unique token; the RFC 3261 magic cookie ``z9hG4bK`` is prefixed unless present.
    """
    return _as_via(via).with_param("branch", _branch(make_branch))


def _first_contact_uri(message: Request | Response) -> Uri | None:
    contacts = message.contact
    return contacts[0].uri if contacts else None


def _is_secure(request: Request, over_tls: bool) -> bool:
    """§12.1.1/§12.1.2: secure when the request went over TLS and its Request-URI is a SIPS URI."""
    return over_tls and isinstance(request.uri, SipUri) and request.uri.is_secure


def _request_uri(uri: Uri) -> Uri:
    """A route-set URI made fit for a Request-URI (§12.2.1.1): no headers, no ``method`` parameter."""
    if not isinstance(uri, SipUri):
        return uri
    stripped = uri.without_headers()
    for name in _NOT_IN_REQUEST_URI:
        stripped = stripped.without_param(name)
    return stripped


def _is_loose(entry: NameAddr) -> bool:
    return isinstance(entry.uri, SipUri) and entry.uri.lr


class Dialog:
    """One dialog (RFC 3261 §12) — a small mutable machine, not a frozen value.

    It is mutable on purpose: its local sequence number advances with every request it builds, its remote
    sequence number with every request it accepts, and its remote target moves on target refresh. Making it
    a frozen value would make every caller thread the new copy back by hand, and two copies of one dialog
    would hand out the same CSeq. Everything readable is exposed as read-only properties; the few changes
    go through named methods, the state change through one table (``_DIALOG_TRANSITIONS``).

    Build one with :meth:`from_uac` (our INVITE and the response that made the dialog) or :meth:`from_uas`
    (their INVITE, our tag and Contact).
    """

    def __init__(
        self,
        *,
        dialog_id: DialogId,
        local_party: NameAddr,
        remote_party: NameAddr,
        remote_target: Uri,
        route_set: tuple[NameAddr, ...],
        local_seq: int | None,
        remote_seq: int | None,
        local_contact: NameAddr | None,
        secure: bool,
        is_uac: bool,
        via: Via | str,
        make_branch: Callable[[], str],
        initial_seq: int = 1,
        state: DialogState = DialogState.EARLY,
    ) -> None:
        if not 0 <= initial_seq < 2**31:
            raise DialogError(f"initial CSeq {initial_seq} must be below 2**31 (RFC 3261 §8.1.1.5)")
        self._id = dialog_id
        self._local_party = _without_tag(local_party)
        self._remote_party = _without_tag(remote_party)
        self._remote_target = remote_target
        self._route_set = route_set
        self._local_seq = local_seq
        self._remote_seq = remote_seq
        self._local_contact = local_contact
        self._secure = secure
        self._is_uac = is_uac
        self._via = _as_via(via)
        self._make_branch = make_branch
        self._initial_seq = initial_seq
        self._state = state

    # ------------------------------------------------------------------------------------- construction

    @classmethod
    def from_uac(
        cls,
        request: Request,
        response: Response,
        *,
        via: Via | str,
        make_branch: Callable[[], str],
        over_tls: bool = False,
    ) -> Dialog:
        """The dialog a 101-299 response with (or, RFC 2543 style, without) a To tag makes (§12.1.2).

        Route set: the response's Record-Route reversed; remote target: its Contact (the Request-URI when a
        provisional response has none); local sequence number: the INVITE's.
        """
        if not 101 <= response.status <= 299:
            raise DialogError(f"a {response.status} response does not create a dialog (RFC 3261 §12.1)")
        if response.call_id != request.call_id or response.cseq.seq != request.cseq.seq:
            raise DialogError("response does not belong to the request (Call-ID or CSeq differ)")
        target = _first_contact_uri(response)
        if target is None:
            if response.status >= 200:
                _log.debug(
                    "2xx without Contact on %s; using the Request-URI as remote target", request.call_id
                )
            target = request.uri
        contacts = request.contact
        dialog_id = DialogId(request.call_id, request.from_.tag, response.to.tag)
        state = DialogState.CONFIRMED if response.status >= 200 else DialogState.EARLY
        return cls(
            dialog_id=dialog_id,
            local_party=request.from_,
            remote_party=response.to,
            remote_target=target,
            route_set=tuple(reversed(response.record_route)),
            local_seq=request.cseq.seq,
            remote_seq=None,
            local_contact=contacts[0] if contacts else None,
            secure=_is_secure(request, over_tls),
            is_uac=True,
            via=via,
            make_branch=make_branch,
            state=state,
        )

    @classmethod
    def from_uas(
        cls,
        request: Request,
        *,
        local_tag: str,
        local_contact: NameAddr | str,
        via: Via | str,
        make_branch: Callable[[], str],
        over_tls: bool = False,
        initial_seq: int = 1,
    ) -> Dialog:
        """The dialog our response to ``request`` makes (§12.1.1), created early; :meth:`confirm` on the 2xx.

        Route set: the request's Record-Route in order; remote target: its Contact; remote sequence number:
        its CSeq; the local sequence number stays empty until we send a request (then ``initial_seq``).
        """
        target = _first_contact_uri(request)
        if target is None:
            raise DialogError(
                "a dialog-creating request must carry a Contact (RFC 3261 §8.1.1.8)", status=400
            )
        return cls(
            dialog_id=DialogId(request.call_id, local_tag, request.from_.tag),
            local_party=request.to,
            remote_party=request.from_,
            remote_target=target,
            route_set=request.record_route,
            local_seq=None,
            remote_seq=request.cseq.seq,
            local_contact=_as_name_addr(local_contact),
            secure=_is_secure(request, over_tls),
            is_uac=False,
            via=via,
            make_branch=make_branch,
            initial_seq=initial_seq,
        )

    # ------------------------------------------------------------------------------------------ reading

    @property
    def id(self) -> DialogId:
        return self._id

    @property
    def state(self) -> DialogState:
        return self._state

    @property
    def local_uri(self) -> Uri:
        return self._local_party.uri

    @property
    def remote_uri(self) -> Uri:
        return self._remote_party.uri

    @property
    def local_party(self) -> NameAddr:
        """From (our side) as written in requests we send, without the tag."""
        return self._local_party

    @property
    def remote_party(self) -> NameAddr:
        """To (their side) as written in requests we send, without the tag."""
        return self._remote_party

    @property
    def remote_target(self) -> Uri:
        return self._remote_target

    @property
    def route_set(self) -> tuple[NameAddr, ...]:
        return self._route_set

    @property
    def local_seq(self) -> int | None:
        return self._local_seq

    @property
    def remote_seq(self) -> int | None:
        return self._remote_seq

    @property
    def local_contact(self) -> NameAddr | None:
        return self._local_contact

    @property
    def secure(self) -> bool:
        return self._secure

    @property
    def is_uac(self) -> bool:
        """Whether we sent the request that created the dialog — and so generated its Call-ID (§14.1)."""
        return self._is_uac

    def matches(self, message: Request | Response) -> bool:
        """Whether ``message`` carries this dialog's ID (§12: the tag roles swap between UAC and UAS)."""
        try:
            if message.call_id != self._id.call_id:
                return False
            if isinstance(message, Response):
                # A response to a request we sent: From holds our tag, To theirs.
                return message.from_.tag == self._id.local_tag and message.to.tag == self._id.remote_tag
            return message.to.tag == self._id.local_tag and message.from_.tag == self._id.remote_tag
        except SipParseError:
            return False

    # ------------------------------------------------------------------------------------------ changes

    def _apply(self, event: _DialogInput) -> None:
        try:
            self._state = _DIALOG_TRANSITIONS[(self._state, event)]
        except KeyError:
            raise DialogError(
                f"dialog {self._id}: cannot {event.value} in state {self._state.value}"
            ) from None

    def confirm(self, response: Response | None = None) -> None:
        """Move to confirmed (§13.2.2.4). A UAC passes the 2xx: the route set is recomputed from it
        (Record-Route reversed) and its Contact becomes the remote target. A UAS passes nothing."""
        self._apply(_DialogInput.CONFIRM)
        if response is not None:
            self._route_set = tuple(reversed(response.record_route))
            target = _first_contact_uri(response)
            if target is not None:
                self._remote_target = target

    def terminate(self) -> None:
        self._apply(_DialogInput.TERMINATE)

    def receive_request(self, request: Request) -> None:
        """Apply §12.2.2 to a request arriving in this dialog: check and advance the remote CSeq.

        ACK and CANCEL carry the number of the request they belong to and are not checked. A number lower
        than (or equal to) the last one accepted is out of order: :class:`DialogError` with status 500. (The
        transaction layer absorbs retransmissions, so an equal number in a new transaction is also stale.)
        The remote target is *not* refreshed here: a target refresh takes effect only once accepted
        (§12.2.2 "atomic"), see :meth:`refresh_target`.
        """
        if request.method in ("ACK", "CANCEL"):
            return
        seq = request.cseq.seq
        if self._remote_seq is not None and seq <= self._remote_seq:
            raise DialogError(
                f"CSeq {seq} {request.method} is not above {self._remote_seq}: out of order (§12.2.2)",
                status=500,
            )
        self._remote_seq = seq

    def refresh_target(self, message: Request | Response) -> None:
        """Take the Contact of an accepted target refresh request or of a 2xx to ours as remote target
        (§12.2.1.2, §12.2.2). Messages without a Contact leave the target alone."""
        method = message.method if isinstance(message, Request) else message.cseq.method
        if method not in TARGET_REFRESH_METHODS:
            return
        target = _first_contact_uri(message)
        if target is not None:
            self._remote_target = target

    def set_local_contact(self, contact: NameAddr | str) -> None:
        """Change the Contact sent in later target refresh requests (§12.2.1.1: our address changed)."""
        self._local_contact = _as_name_addr(contact)

    # ------------------------------------------------------------------------------------------ building

    def create_request(
        self,
        method: str,
        *,
        body: bytes = b"",
        content_type: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
    ) -> Request:
        """A new request inside the dialog (§12.2.1.1) with the next local CSeq and a fresh branch.

        To/From carry the remote/local URI and tags, the Request-URI and Route follow the route set
        (loose routing, or the strict-router rewrite when the first route lacks ``;lr``). Target refresh
        requests (INVITE, UPDATE) carry our Contact. ``content_type`` defaults to application/sdp when a body
        is given. ACK and CANCEL are not built here: see :meth:`create_ack`; the transaction layer builds
        CANCEL.
        """
        method = method.upper()
        if method in ("ACK", "CANCEL"):
            raise DialogError(
                f"{method} reuses its request's CSeq: use create_ack() / TransactionLayer.cancel()"
            )
        if self._state is DialogState.TERMINATED:
            raise DialogError(f"dialog {self._id} is terminated; no {method} can be sent in it")
        if self._local_seq is None:
            seq = self._initial_seq
        else:
            seq = self._local_seq + 1
            if seq > MAX_UINT32:
                raise DialogError("local CSeq exhausted (2**32-1)")
        self._local_seq = seq
        contact = self._local_contact if method in TARGET_REFRESH_METHODS else None
        return self._build(
            method, seq, body=body, content_type=content_type, headers=headers, contact=contact
        )

    def create_ack(
        self,
        invite: Request,
        response: Response,
        *,
        body: bytes = b"",
        content_type: str | None = None,
    ) -> Request:
        """The ACK for a 2xx to ``invite`` (§13.2.2.4): an in-dialog request with the INVITE's CSeq number,
        method ACK, a fresh branch and the INVITE's credentials; it goes straight to the transport.

        Call :meth:`confirm` (initial INVITE) or :meth:`refresh_target` (re-INVITE) with the 2xx first, so
        the ACK follows the route set and remote target the 2xx established.
        """
        if invite.method != "INVITE":
            raise DialogError(f"an ACK acknowledges an INVITE, not {invite.method}")
        if not 200 <= response.status <= 299:
            raise DialogError(
                f"the ACK for a {response.status} belongs to the INVITE transaction (§17.1.1.3)"
            )
        if response.cseq.seq != invite.cseq.seq or response.cseq.method != "INVITE":
            raise DialogError(f"response CSeq {response.cseq} does not answer INVITE CSeq {invite.cseq}")
        if not self.matches(response):
            raise DialogError("2xx does not belong to this dialog (tags differ)")
        credentials = tuple(
            (h.name, h.value) for h in invite.headers if header_key(h.name) in _CREDENTIAL_HEADERS
        )
        return self._build(
            "ACK",
            invite.cseq.seq,
            body=body,
            content_type=content_type,
            headers=(*credentials,),
            contact=None,
        )

    def _build(
        self,
        method: str,
        seq: int,
        *,
        body: bytes,
        content_type: str | None,
        headers: Iterable[tuple[str, str]],
        contact: NameAddr | None,
    ) -> Request:
        request_uri, routes = self._route()
        via = via_with_branch(self._via, self._make_branch)
        lines: list[Header] = [Header("Via", str(via)), Header("Max-Forwards", str(MAX_FORWARDS))]
        lines.extend(Header("Route", str(route)) for route in routes)
        lines.append(Header("From", str(_with_tag(self._local_party, self._id.local_tag))))
        lines.append(Header("To", str(_with_tag(self._remote_party, self._id.remote_tag))))
        lines.append(Header("Call-ID", self._id.call_id))
        lines.append(Header("CSeq", f"{seq} {method}"))
        if contact is not None:
            lines.append(Header("Contact", str(contact)))
        extra = [Header(name, value) for name, value in headers]
        lines.extend(extra)
        if body:
            lines.append(Header("Content-Type", content_type or "application/sdp"))
        request = Request(method, request_uri, tuple(lines), body)
        if any(header_key(h.name) in ("via", "cseq") for h in extra):
            return request
        return seed_parsed(request, via=(via,), cseq=CSeq(seq, method))

    def _route(self) -> tuple[Uri, tuple[NameAddr, ...]]:
        """Request-URI and Route values per §12.2.1.1."""
        if not self._route_set:
            return self._remote_target, ()
        first = self._route_set[0]
        if _is_loose(first):
            return self._remote_target, self._route_set
        # Strict router (RFC 2543): it gets the Request-URI; the remote target rides last in Route.
        return _request_uri(first.uri), (*self._route_set[1:], NameAddr(None, self._remote_target))

    def __repr__(self) -> str:
        i = self._id
        return f"<Dialog {i.call_id} local={i.local_tag} remote={i.remote_tag} {self._state.value}>"


# ----------------------------------------------------------------------------------------- dialog sets


@attrs.frozen
class EarlyDialogCreated:
    """A provisional response with a new To tag made an early dialog (§13.2.2.1)."""

    dialog_id: DialogId


@attrs.frozen
class DialogConfirmed:
    """The first 2xx: this dialog is the call's (created confirmed, or early → confirmed). ACK it."""

    dialog_id: DialogId


@attrs.frozen
class AnswerRetransmitted:
    """A 2xx already seen came again: send ``ack`` again (§13.2.2.4). ``ack`` is ``None`` while the ACK
    has not been built yet (the TU still owes the answer a delayed offer needs)."""

    dialog_id: DialogId
    ack: Request | None


@attrs.frozen
class ForkAnswered:
    """A 2xx from another fork after one was confirmed (§13.2.2.4): send ``ack`` straight to the transport
    and ``bye`` in a new client transaction — the call already has its dialog."""

    dialog_id: DialogId
    ack: Request
    bye: Request


@attrs.frozen
class EarlyDialogsTerminated:
    """A non-2xx final response ended every early dialog of the INVITE (§12.3, §13.2.2.3)."""

    dialog_ids: tuple[DialogId, ...]


DialogSetEvent = (
    EarlyDialogCreated | DialogConfirmed | AnswerRetransmitted | ForkAnswered | EarlyDialogsTerminated
)


class DialogSet:
    """The dialogs one INVITE of ours made, keyed by (Call-ID, local tag); forks differ by remote tag.

    Feed every response to the INVITE to :meth:`receive_response`. It creates early dialogs from tagged
    1xx, confirms the first 2xx (the call's dialog — ACK it with :meth:`acknowledge`), and answers 2xx
    retransmissions and late 2xx from other forks with the ACK (and BYE) to send.
    """

    def __init__(
        self,
        invite: Request,
        *,
        via: Via | str,
        make_branch: Callable[[], str],
        over_tls: bool = False,
    ) -> None:
        if invite.method != "INVITE":
            raise DialogError(f"a dialog set belongs to an INVITE, not {invite.method}")
        self._invite = invite
        self._via = _as_via(via)
        self._make_branch = make_branch
        self._over_tls = over_tls
        self._dialogs: dict[str | None, Dialog] = {}
        self._answers: dict[str | None, Response] = {}
        self._acks: dict[str | None, Request] = {}
        self._confirmed: str | None = None
        self._has_confirmed = False

    @property
    def key(self) -> tuple[str, str | None]:
        """(Call-ID, local tag): what the endpoint files the set under."""
        return (self._invite.call_id, self._invite.from_.tag)

    @property
    def invite(self) -> Request:
        return self._invite

    @property
    def dialogs(self) -> dict[str | None, Dialog]:
        """Every dialog by remote tag (a copy)."""
        return dict(self._dialogs)

    @property
    def confirmed(self) -> Dialog | None:
        """The call's dialog: the one the first 2xx confirmed."""
        return self._dialogs[self._confirmed] if self._has_confirmed else None

    def dialog(self, remote_tag: str | None) -> Dialog | None:
        return self._dialogs.get(remote_tag)

    def answered(self, remote_tag: str | None) -> bool:
        """Whether a 2xx from this fork was seen already."""
        return remote_tag in self._answers

    def _new_dialog(self, response: Response) -> Dialog:
        return Dialog.from_uac(
            self._invite, response, via=self._via, make_branch=self._make_branch, over_tls=self._over_tls
        )

    def receive_response(self, response: Response) -> DialogSetEvent | None:
        """Account for one response to the INVITE (§13.2.2); ``None`` when it changes nothing."""
        if response.cseq.seq != self._invite.cseq.seq or response.cseq.method != "INVITE":
            raise DialogError(f"response CSeq {response.cseq} is not for INVITE {self._invite.cseq}")
        tag = response.to.tag
        status = response.status
        if status < 200:
            if status == 100 or tag is None or tag in self._dialogs:
                return None
            dialog = self._new_dialog(response)
            self._dialogs[tag] = dialog
            return EarlyDialogCreated(dialog.id)
        if status >= 300:
            early = [d for d in self._dialogs.values() if d.state is DialogState.EARLY]
            for dialog in early:
                dialog.terminate()
            return EarlyDialogsTerminated(tuple(d.id for d in early))
        # 2xx
        if tag in self._answers:
            return AnswerRetransmitted(self._dialogs[tag].id, self._acks.get(tag))
        existing = self._dialogs.get(tag)
        if existing is None or existing.state is DialogState.TERMINATED:
            dialog = self._new_dialog(response)
            self._dialogs[tag] = dialog
        else:
            dialog = existing
            dialog.confirm(response)
        self._answers[tag] = response
        if not self._has_confirmed:
            self._confirmed = tag
            self._has_confirmed = True
            return DialogConfirmed(dialog.id)
        ack = dialog.create_ack(self._invite, response)
        self._acks[tag] = ack
        bye = dialog.create_request("BYE")
        dialog.terminate()
        _log.debug("%s: 2xx from a second fork (tag %s): ACK and BYE", self._invite.call_id, tag)
        return ForkAnswered(dialog.id, ack, bye)

    def acknowledge(
        self, remote_tag: str | None, *, body: bytes = b"", content_type: str | None = None
    ) -> Request:
        """Build (once) and remember the ACK for the 2xx from fork ``remote_tag``; later retransmissions of
        that 2xx are answered with it (:class:`AnswerRetransmitted`)."""
        response = self._answers.get(remote_tag)
        if response is None:
            raise DialogError(f"no 2xx from fork {remote_tag!r} to acknowledge")
        ack = self._acks.get(remote_tag)
        if ack is None:
            ack = self._dialogs[remote_tag].create_ack(
                self._invite, response, body=body, content_type=content_type
            )
            self._acks[remote_tag] = ack
        return ack

    def terminate(self) -> None:
        """End every dialog of the set (the call is over)."""
        for dialog in self._dialogs.values():
            dialog.terminate()
