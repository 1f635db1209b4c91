"""What a :class:`~routing.server.Server` says on the wire, for interop tests with real phones.

:class:`SipTrace` is a tracer on the server endpoint (``Endpoint.add_tracer``: every message in and out,
retransmissions included) and keeps every SIP message, parsed, in order; input that does not parse is left
out. Attach it after constructing the server, best before starting it (so it misses nothing).
"""

from __future__ import annotations

from dataclasses import dataclass

from durchwahl.media.errors import SdpError
from durchwahl.media.sdp import parse_sdp
from durchwahl.sipcore.endpoint import Endpoint
from durchwahl.sipcore.errors import SipParseError
from durchwahl.sipcore.message import Request, Response, parse_message
from durchwahl.sipcore.transport import Flow


@dataclass(frozen=True)
class Traced:
    """One message: ``way`` "in" (received by the server) or "out" (sent by it), on ``flow``."""

    way: str
    flow: Flow
    message: Request | Response

    @property
    def direction(self) -> str | None:
        """The audio stream's direction an SDP body declares (sendrecv when it says nothing); None without
        an SDP body (or with one that does not parse)."""
        content_type = (self.message.get("content-type") or "").split(";")[0].strip().lower()
        if not self.message.body or content_type != "application/sdp":
            return None
        try:
            description = parse_sdp(self.message.body)
        except SdpError:
            return None
        audio = [m for m in description.media if m.media == "audio"]
        return audio[0].direction(description.direction()) if audio else None

    def __str__(self) -> str:
        m = self.message
        first = f"{m.method} {m.uri}" if isinstance(m, Request) else f"{m.status} {m.reason}"
        return f"{self.way} {self.flow.transport} {self.flow.remote} {first} CSeq {m.cseq} {self.direction}"


class SipTrace:
    """Every SIP message ``endpoint`` receives and sends (see the module docstring)."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.messages: list[Traced] = []
        endpoint.add_tracer(self._keep)

    def _keep(self, way: str, data: bytes, flow: Flow) -> None:
        try:
            message = parse_message(data, stream=flow.transport != "UDP")
        except SipParseError:
            return  # keep-alives (CRLF) and the like
        self.messages.append(Traced(way, flow, message))

    def reinvites(self, way: str, call_id: str | None = None) -> list[Traced]:
        """The re-INVITEs (in-dialog INVITEs: a To tag) that went ``way``, optionally of one Call-ID, in
        order; a retransmission (same Call-ID and CSeq) is not counted again."""
        found: dict[tuple[str, int], Traced] = {}
        for t in self.messages:
            m = t.message
            if (
                t.way == way
                and isinstance(m, Request)
                and m.method == "INVITE"
                and m.to.tag is not None
                and (call_id is None or m.call_id == call_id)
            ):
                found.setdefault((m.call_id, m.cseq.seq), t)
        return list(found.values())

    def answer(self, request: Traced) -> Traced | None:
        """The final 2xx that answered ``request`` (same Call-ID and CSeq, the other way), if any yet."""
        assert isinstance(request.message, Request)
        for t in self.messages:
            m = t.message
            if (
                t.way != request.way
                and isinstance(m, Response)
                and 200 <= m.status < 300
                and m.call_id == request.message.call_id
                and m.cseq == request.message.cseq
            ):
                return t
        return None

    def dump(self) -> str:
        return "\n".join(str(t) for t in self.messages)
