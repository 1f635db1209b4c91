"""Who is calling: an employee (digest credentials), a trunk (its source address) or an anonymous source —
decided once per INVITE, from the dial string parsed once.

A trunk's address identifies the trunk for calls to its numbers, matched by the resolver's own number lookup
(``+E.164``, ``00…``, E.164 without ``+``, national by the trunk's numbering plan). A number that is none of
the trunk's, sent from its address, is the trunk's call all the same (answered 404, or 403 for another
trunk's number: never a challenge, which no provider answers) — unless it is a phone's on the same host or
network: one with credentials or with an employee in From, which authenticates like any caller (as does any
request dialling an extension). A trunk with ``tls_verify_client`` is recognised only over a TLS connection
whose client certificate names its host. Challenges to INVITEs are sent statelessly (a stateful 401 would be
retransmitted ten times towards a source that may be spoofed).
"""

from __future__ import annotations

from durchwahl.media.sdes import SrtpPolicy
from durchwahl.sipcore.endpoint import IncomingRequest
from durchwahl.sipcore.message import Request
from durchwahl.sipcore.tls import name_matches
from durchwahl.sipcore.uri import SipUri, TelUri

from ..authenticator import Unverified, Verified
from ..dialstring import DialKind, DialString
from ..directory import Trunk
from ..resolver import Anonymous, Caller, FromEmployee, FromTrunk, Refused
from ..security import trunk_accepts, trunk_for_source
from .media_anchor import leg_srtp
from .services import CallServices

__all__ = ["caller_label", "caller_srtp", "challenge", "identify_caller", "refuse"]


def identify_caller(
    services: CallServices, incoming: IncomingRequest, dialled: DialString | None
) -> Caller | None:
    """The caller of ``incoming`` (an INVITE that dials ``dialled``; None: its Request-URI dials nothing);
    None when the request was answered here (a correct answer to an expired nonce: ``stale=true``)."""
    request = incoming.request
    verdict = services.registrar.authenticator.verify(request, incoming.flow)
    if isinstance(verdict, Verified):
        employee = services.directory.employee_by_sip_user(verdict.username)
        if employee is not None:
            return FromEmployee(employee.extension)
    if dialled is not None:
        source = services.registrar.authenticator.source(
            request, incoming.flow
        )  # behind an edge: the trunk's
        for trunk in services.directory.trunks:
            if not trunk_accepts(trunk, source) or not _certified(services, incoming, trunk):
                continue
            number = services.resolver.inbound_number(dialled, trunk.name)  # by the trunk's numbering plan
            if number is not None and number.trunk == trunk.name:
                return FromTrunk(trunk.name, _calling_number(request))
        sender = trunk_for_source(services.directory, source)
        if (
            sender is not None
            and dialled.kind is not DialKind.EXTENSION
            and _certified(services, incoming, sender)
            and not _a_phone(services, request)
        ):
            # A number from a trunk's address, none of its own: the trunk's call, refused 404 or 403 by the
            # resolver — never a challenge, which no provider answers.
            return FromTrunk(sender.name, _calling_number(request))
    if isinstance(verdict, Unverified) and verdict.stale:
        challenge(services, incoming, stale=True)
        return None
    return Anonymous(str(incoming.flow), challenge=True)


def _a_phone(services: CallServices, request: Request) -> bool:
    """Whether a request from a trunk's address is a phone's all the same: it carries credentials, or its
    From is an employee's (a provider sends the calling party's number, never our users)."""
    if request.get("authorization") is not None or request.get("proxy-authorization") is not None:
        return True
    uri = request.from_.uri
    return isinstance(uri, SipUri) and services.directory.employee_by_sip_user(uri.user or "") is not None


def caller_srtp(services: CallServices, caller: Caller, incoming: IncomingRequest) -> SrtpPolicy | None:
    """The SRTP policy of the caller's leg: its employee's or trunk's policy (``offered`` for anyone else)
    over TLS, plain RTP otherwise; None: the caller must use SRTP but did not call over TLS."""
    policy = SrtpPolicy.OFFERED
    if isinstance(caller, FromEmployee):
        employee = services.directory.employee(caller.extension)
        policy = employee.srtp if employee is not None else policy
    elif isinstance(caller, FromTrunk):
        trunk = services.directory.trunk(caller.name)
        policy = trunk.srtp if trunk is not None else policy
    return leg_srtp(policy, incoming.flow)


def _certified(services: CallServices, incoming: IncomingRequest, trunk: Trunk) -> bool:
    """Whether ``incoming`` may be the trunk's as far as TLS goes: with ``tls_verify_client`` only over a TLS
    connection whose client certificate was verified for the trunk's host."""
    if trunk.tls is None or not trunk.tls.verify_client:
        return True
    names = services.ua.endpoint.peer_names(incoming.flow) or ()
    return any(name_matches(name, trunk.host) for name in names)


def _calling_number(request: Request) -> str | None:
    """The caller's number as the trunk gave it: the From URI's user part (a tel URI's number)."""
    uri = request.from_.uri
    if isinstance(uri, TelUri):
        return uri.number
    return uri.user if isinstance(uri, SipUri) else None


def challenge(
    services: CallServices, incoming: IncomingRequest, *, stale: bool = False, proxy: bool = False
) -> None:
    """Challenge an INVITE statelessly (RFC 3261 §8.2.7): one 401/407, not retransmitted."""
    authenticator = services.registrar.authenticator
    request = incoming.request
    tag = authenticator.stateless_tag(request)
    incoming.send_stateless(
        authenticator.challenge(request, incoming.flow, to_tag=tag, stale=stale, proxy=proxy)
    )


def refuse(services: CallServices, incoming: IncomingRequest, route: Refused, caller: Caller) -> None:
    """Answer an INVITE the resolver refused: a challenge for an anonymous caller, else the status (a 403,
    refused by policy, goes to the security log)."""
    if route.status in (401, 407) and isinstance(caller, Anonymous):
        challenge(services, incoming, proxy=route.status == 407)
        return
    if route.status == 403:
        request = incoming.request
        who = caller.extension if isinstance(caller, FromEmployee) else "anonymous"
        if isinstance(caller, FromTrunk):
            who = f"trunk:{caller.name}"
        authenticator = services.registrar.authenticator
        seen = authenticator.seen(request, incoming.flow)
        authenticator.security.policy_refused(seen, request.method, who, str(request.uri), 403, route.reason)
    incoming.respond(route.status, route.reason)


def caller_label(request: Request, caller: Caller) -> tuple[str, str | None]:
    """Who calls, for the CDR: an employee's extension, else the From URI; and the trunk it came from."""
    if isinstance(caller, FromEmployee):
        return caller.extension, None
    return str(request.from_.uri), caller.name if isinstance(caller, FromTrunk) else None
