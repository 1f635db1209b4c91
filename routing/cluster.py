"""Several nodes behind an edge proxy (Kamailio), sharing their state: the ``[cluster]`` settings and what
a node may believe of the edge, without I/O.

* **The edge** is named by address in ``[cluster] edges`` (an IP address or network, optionally with the
  port it sends from: ``127.0.0.1:5060``). Only requests whose transport source is an edge are believed to
  carry the edge's additions; a phone that reaches a node directly cannot forge them.
* **Path** (RFC 3327): a REGISTER from an edge carries the edge's Path; the registrar stores it and reaches
  the phone through it (the edge keeps the phone's NAT flow). A Path in a REGISTER from anywhere else is
  ignored: a phone must not choose where the node sends.
* **The client's address**: behind the edge every request comes from the edge's address. The edge says
  whose request it relays in :data:`EDGE_SOURCE_HEADER` (``X-Edge-Source: sip:192.0.2.7:5062``, Kamailio's
  ``$su``), after removing any copy a phone sent. :func:`client_address` is that address for a request from
  an edge, else the transport source. The brute-force guard, the digest nonce binding, the challenge rate,
  trunk recognition and the security log all key on it, so they treat phones behind the edge as they treat
  phones that reach the node directly.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Mapping, Sequence
from typing import Any, Final

import attrs

from durchwahl.sipcore.errors import SipParseError
from durchwahl.sipcore.message import Request
from durchwahl.sipcore.uri import SipUri, parse_uri

from .config_check import Checker

__all__ = [
    "EDGE_SOURCE_HEADER",
    "ClusterConfig",
    "EdgeAddress",
    "client_address",
    "from_edge",
    "parse_edge",
    "read_cluster",
]

#: The header in which the edge names the address a request came to it from (Kamailio's ``$su``).
EDGE_SOURCE_HEADER: Final = "X-Edge-Source"

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@attrs.frozen
class EdgeAddress:
    """Where an edge proxy's requests come from: a network (one address: /32, /128) and maybe a port."""

    network: IpNetwork
    port: int | None = None

    def matches(self, host: str, port: int) -> bool:
        ip = _ip(host)
        if ip is None or ip.version != self.network.version or ip not in self.network:
            return False
        return self.port is None or self.port == port

    def __str__(self) -> str:
        net = str(self.network.network_address) if self.network.num_addresses == 1 else str(self.network)
        if self.port is None:
            return net
        return f"[{net}]:{self.port}" if self.network.version == 6 else f"{net}:{self.port}"


@functools.lru_cache(maxsize=4096)
def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def parse_edge(text: str) -> EdgeAddress:
    """``127.0.0.1``, ``127.0.0.1:5060``, ``10.0.0.0/24``, ``::1``, ``[::1]:5060``; ValueError otherwise."""
    text = text.strip()
    port: int | None = None
    host = text
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"{text!r}: expected [IPv6]:port")
            port = _port(text, rest[1:])
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = _port(text, port_text)
    try:
        network = ipaddress.ip_network(host, strict=False)
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address or network (with an optional :port)") from None
    return EdgeAddress(network, port)


def _port(text: str, port: str) -> int:
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{text!r}: the port must be 1-65535")
    return int(port)


@attrs.frozen
class ClusterConfig:
    """The ``[cluster]`` table: the shared store (a ``redis://`` URL) and the edges' addresses. ``node`` is
    this node's name (``durchwahl serve --node``), in logs and CDRs; None outside a cluster's launch."""

    store: str
    edges: tuple[EdgeAddress, ...] = ()
    node: str | None = None


def from_edge(edges: Sequence[EdgeAddress], remote: tuple[str, int]) -> bool:
    """Whether a request from ``remote`` (the transport source) comes from an edge proxy."""
    return any(edge.matches(remote[0], remote[1]) for edge in edges)


def edge_reported(
    request: Request, remote: tuple[str, int], edges: Sequence[EdgeAddress]
) -> tuple[str, int] | None:
    """The phone's address and port as an edge proxy reports them (:data:`EDGE_SOURCE_HEADER`; port 0 when
    it gave none); None unless the request comes from an edge and says so readably."""
    if not edges or not from_edge(edges, remote):
        return None
    said = request.get(EDGE_SOURCE_HEADER)
    if said is None:
        return None
    try:
        uri = parse_uri(said.strip())
    except SipParseError:
        return None
    if not isinstance(uri, SipUri) or _ip(uri.host) is None:
        return None
    return uri.host.strip("[]"), uri.port or 0


def client_address(request: Request, remote: tuple[str, int], edges: Sequence[EdgeAddress]) -> str:
    """The address the request came from as far as it can be known: the edge's word for it when the request
    comes from an edge and says (:data:`EDGE_SOURCE_HEADER`), else the transport source."""
    reported = edge_reported(request, remote, edges)
    return reported[0] if reported is not None else remote[0]


# ------------------------------------------------------------------------------------------ the file

#: The keys of ``[cluster]``.
CLUSTER_KEYS: Final = frozenset({"store", "edges"})


def read_cluster(checker: Checker, data: Any) -> ClusterConfig | None:
    """The ``[cluster]`` table read and checked (problems reported to ``checker``); None when it has any."""
    if not isinstance(data, Mapping):
        checker.report("cluster", None, None, "must be a table")
        return None
    before = len(checker.problems)
    checker.unknown_keys("cluster", None, data)
    store = checker.get("cluster", None, data, "store", str)
    if store is not None and not store.startswith(("redis://", "rediss://", "unix://")):
        checker.report(
            "cluster", None, "store", f"{store!r} is not a Redis URL (redis://HOST:PORT/DB or unix://PATH)"
        )
    edges: list[EdgeAddress] = []
    for text in checker.get_str_list("cluster", None, data, "edges") or []:
        try:
            edges.append(parse_edge(text))
        except ValueError as exc:
            checker.report("cluster", None, "edges", str(exc))
    if "edges" not in data:
        checker.warn(
            "cluster",
            None,
            "edges",
            "no edge proxy named: every request's transport source counts as the client, and Path "
            "headers are ignored (name the Kamailio address here)",
        )
    if len(checker.problems) > before or store is None:
        return None
    return ClusterConfig(store, tuple(edges))
