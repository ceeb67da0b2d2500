"""What the pool dials: an endpoint's ``Addr`` read as a network address, never as a gRPC target.

etcd's Go resolver hands ``Addr`` to grpc-go as a plain network address. grpcio reads any
string it is given as a target URI, so a registered ``unix:/path``, ``dns://<server>/host:port``
or ``ipv4:a,b`` would make every client connect where the registry says, with its calls'
metadata. :func:`parse_address` accepts exactly ``host:port``, ``[IPv6]:port`` and
``IPv4:port``, and :attr:`Address.target` names it with an explicit scheme (``dns:///``), so
nothing in an ``Addr`` can choose how it is dialled.

Rules, beyond that shape: the port is a decimal number from 1 to 65535 (no sign, no leading
zero); the whole ``Addr`` is printable ASCII without spaces; a host name is dot-separated labels
of letters, digits, ``-`` and ``_`` (at most 63 characters each, not starting or ending with
``-``, 253 in all), may end with a dot (a fully qualified name) and must not end in an
all-numeric label (``1.2.3`` and ``0x7f.1`` would be read as IPv4 by some resolvers); an IPv4
address is four decimal parts without leading zeros; an IPv6 address is in brackets, without a
zone (``%eth0`` means nothing on another host). Refused: an empty host (``:50051``), a missing
port (``1.2.3.4``: grpc would pick 443 by itself), and internationalised names in Unicode
(register their ASCII ``xn--`` form).

Default policy: with no ``address_filter``, an IP address that no client should dial is refused:
unspecified (``0.0.0.0``, ``::``: a server's bind address registered by mistake, which a client
would reach on its own host), link-local (``169.254.0.0/16``, ``fe80::/10``: where cloud metadata
services answer) and multicast. Kubernetes refuses the same in EndpointSlices. Loopback stays
allowed (development and tests). An ``address_filter`` replaces the policy: it alone decides, so
``allow_networks("169.254.0.0/16")`` lets link-local addresses through.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Address", "AddressFilter", "address_refusal", "allow_networks", "parse_address"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# A 253-character name, its trailing dot and ":65535".
_MAX_LENGTH = 260
_ALLOWED = re.compile(r"[A-Za-z0-9._:\[\]-]*")
_PORT = re.compile(r"[1-9][0-9]{0,4}")
_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
_DOTTED_DIGITS = re.compile(r"[0-9.]+")
# A URI scheme; one made of hex digits only may as well be the first group of an IPv6 address.
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9.-]*:")
_HEX_GROUP = re.compile(r"[0-9A-Fa-f]{1,4}:")


@dataclass(frozen=True)
class Address:
    """A registered ``Addr`` the pool may dial: a host and a port.

    ``host`` is a DNS name as registered, or an IP address in its canonical form (then also in
    ``ip``). :attr:`target` is the gRPC target that dials exactly this address.
    """

    host: str
    port: int
    ip: IPAddress | None = None

    @property
    def target(self) -> str:
        """``dns:///host:port`` (``dns:///[IPv6]:port``), whatever the host.

        gRPC's DNS resolver takes an IP literal as it is, without a lookup. The ``ipv4:`` and
        ``ipv6:`` schemes would do as well, but cost measurably more per call with grpcio 1.85
        (about 5 % of the pool's throughput in ``benchmarks/bench_pool.py``).
        """
        return f"dns:///{self}"

    def __str__(self) -> str:
        if self.ip is not None and self.ip.version == 6:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


# Decides whether the pool may dial an address (see ``resolve(address_filter=...)``).
AddressFilter = Callable[[Address], bool]


def parse_address(addr: str) -> Address:
    """Read ``addr`` as ``host:port``, ``[IPv6]:port`` or ``IPv4:port``.

    Raises :class:`ValueError` saying what is wrong; the message never repeats ``addr``, which
    may be anything (quote it escaped, if at all).
    """
    if not addr:
        raise ValueError("the address is empty")
    if len(addr) > _MAX_LENGTH:
        raise ValueError(f"the address is longer than {_MAX_LENGTH} characters")
    if not (addr.isascii() and addr.isprintable()) or " " in addr:
        raise ValueError(
            "the address has a space, a control or a non-ASCII character (register an "
            "internationalised name in its xn-- form)"
        )
    if not _ALLOWED.fullmatch(addr):
        bad = next(c for c in addr if not _ALLOWED.fullmatch(c))
        raise ValueError(
            f"the address has {bad!r}: it must be host:port, [IPv6]:port or IPv4:port, "
            "not a URI, a path or a list"
        )
    if addr.startswith("["):
        host, bracket, port = addr[1:].partition("]:")
        if not bracket:
            raise ValueError("an [IPv6] address needs ']:' and a port after it")
        ip = _ipv6(host)
        return Address(str(ip), _port(port), ip)
    host, colon, port = addr.rpartition(":")
    if not colon:
        raise ValueError("the address has no port")
    if not host:
        raise ValueError("the address has no host")
    if ":" in host or "[" in host or "]" in host:
        if _SCHEME.match(host) and not _HEX_GROUP.match(host):
            raise ValueError(
                "the address starts with a scheme: it must be host:port, [IPv6]:port or "
                "IPv4:port, not a URI"
            )
        raise ValueError("an IPv6 address must be in brackets: [IPv6]:port")
    return _host(host, _port(port))


def _port(text: str) -> int:
    if not _PORT.fullmatch(text) or int(text) > 65535:
        raise ValueError("the port must be a number from 1 to 65535")
    return int(text)


def _ipv6(text: str) -> ipaddress.IPv6Address:
    try:
        return ipaddress.IPv6Address(text)
    except ValueError:
        raise ValueError("the part in brackets is not an IPv6 address") from None


def _host(host: str, port: int) -> Address:
    if _DOTTED_DIGITS.fullmatch(host):
        try:
            ip = ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(
                "the host looks like an IPv4 address but is not one (four parts from 0 to 255, "
                "no leading zeros)"
            ) from None
        return Address(str(ip), port, ip)
    name = host.removesuffix(".")
    labels = name.split(".")
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise ValueError(
            "the host is not a valid name (labels of letters, digits, '-' and '_', 1 to 63 "
            "characters, 253 in all)"
        )
    if labels[-1].isdigit():
        raise ValueError("the host name ends in a number, which resolvers may read as IPv4")
    return Address(host, port)


class _AllowNetworks:
    """An address filter admitting IP addresses in given networks."""

    def __init__(self, networks: tuple[IPNetwork, ...]) -> None:
        self.networks = networks

    def __call__(self, address: Address) -> bool:
        ip = address.ip
        if ip is None:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self.networks)

    def __repr__(self) -> str:
        return f"allow_networks({', '.join(repr(str(n)) for n in self.networks)})"


def allow_networks(*networks: str | IPNetwork) -> AddressFilter:
    """An ``address_filter`` for :func:`resolve` that admits only IPs in ``networks``.

    ``networks`` are CIDR strings such as ``"10.0.0.0/8"`` or ``"fd00::/8"``, or
    ``ipaddress`` networks. Host names are refused: what a name resolves to is decided inside
    gRPC, after the filter. An IPv4-mapped IPv6 address (``::ffff:10.0.0.1``) counts as its
    IPv4 address.
    """
    if not networks:
        raise ValueError("allow_networks() needs at least one network")
    return _AllowNetworks(tuple(ipaddress.ip_network(n) for n in networks))


def _special(ip: IPAddress) -> str | None:
    """Why the default policy refuses ``ip`` (None: it does not)."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_unspecified:
        return "the unspecified address (a server's bind address, not one to dial)"
    if ip.is_link_local:
        return "a link-local address (cloud metadata services answer there)"
    if ip.is_multicast:
        return "a multicast address"
    return None


def address_refusal(addr: str, address_filter: AddressFilter | None = None) -> str | None:
    """Why a pool with ``address_filter`` would not dial ``addr``; None when it would.

    ``addr`` is a registered ``Addr``. It is refused when it is not ``host:port``,
    ``[IPv6]:port`` or ``IPv4:port`` (see :func:`parse_address`), when ``address_filter``
    refuses it or, without a filter, when it is an unspecified, link-local or multicast IP
    address. Never raises; the reason never repeats ``addr``.
    """
    try:
        address = parse_address(addr)
    except ValueError as exc:
        return str(exc)
    if address_filter is None:
        reason = None if address.ip is None else _special(address.ip)
        if reason is None:
            return None
        return f"{reason}; allow it with address_filter=allow_networks(...)"
    try:
        admitted = bool(address_filter(address))
    except Exception as exc:
        return f"the address filter failed on it: {exc!r}"
    return None if admitted else "the address filter refused it"
