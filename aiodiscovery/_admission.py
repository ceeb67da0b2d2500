"""Which endpoints of a set the pool dials, and why it skips the others.

Registry data is untrusted: an endpoint whose ``Addr`` is not a plain network address (see
:mod:`aiodiscovery._address`), that the operator's ``address_filter`` refuses, or whose
subchannel cannot be made, is skipped. Each (key, address) pair is logged once, while it lasts,
and counted; the other endpoints are served as if it were not there.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from ._address import Address, AddressFilter, parse_address
from ._endpointset import EndpointSet
from ._logsafe import safe

__all__ = ["Admission", "Wanted"]

logger = logging.getLogger("aiodiscovery")


@dataclass
class Wanted:
    """An address the pool should hold, with what the registry says about it."""

    address: Address
    # The metadata of the first key naming the address.
    metadata: object
    keys: list[str] = field(default_factory=list)
    # The newest etcd mod revision among those keys: it grows when the address is registered
    # again, even with the same value.
    revision: int = 0


class Admission:
    """Sorts each endpoint set into addresses to dial and endpoints to skip."""

    def __init__(self, target: str, address_filter: AddressFilter | None) -> None:
        self._target = target
        self._filter = address_filter
        # Address text -> the parsed address, or why it is refused; for the last set's only.
        self._verdicts: dict[str, Address | str] = {}
        # (key, address) pairs already warned about, while they last.
        self._warned: set[tuple[str, str]] = set()
        self.skipped: dict[str, str] = {}
        self.skipped_total = 0

    def select(self, snapshot: EndpointSet) -> dict[str, Wanted]:
        """The addresses of ``snapshot`` to dial, by address text, in key order."""
        verdicts: dict[str, Address | str] = {}
        wanted: dict[str, Wanted] = {}
        self.skipped = {}
        for key, endpoint in snapshot.items():
            addr = endpoint.addr
            verdict = verdicts.get(addr)
            if verdict is None:
                verdict = self._verdicts.get(addr) or self._judge(addr)
                verdicts[addr] = verdict
            if isinstance(verdict, str):
                self.skipped[key] = verdict
                continue
            revision = snapshot.mod_revision(key)
            want = wanted.get(addr)
            if want is None:
                wanted[addr] = Wanted(verdict, endpoint.metadata, [key], revision)
            else:
                want.keys.append(key)
                want.revision = max(want.revision, revision)
        self._verdicts = verdicts
        current = {(key, snapshot[key].addr) for key in self.skipped}
        self._warned &= current
        for key, addr in current - self._warned:
            self._warn(key, addr, self.skipped[key])
        return wanted

    def refuse(self, addr: str, want: Wanted, reason: str) -> None:
        """Skip ``addr`` from now on (its subchannel could not be made, for ``reason``)."""
        self._verdicts[addr] = reason
        for key in want.keys:
            self.skipped[key] = reason
            self._warn(key, addr, reason)

    def _judge(self, addr: str) -> Address | str:
        try:
            address = parse_address(addr)
        except ValueError as exc:
            return str(exc)
        if self._filter is None:
            return address
        try:
            admitted = bool(self._filter(address))
        except Exception as exc:
            return f"the address filter failed on it: {exc!r}"
        return address if admitted else "the address filter refused it"

    def _warn(self, key: str, addr: str, reason: str) -> None:
        if (key, addr) in self._warned:
            return
        self._warned.add((key, addr))
        self.skipped_total += 1
        logger.warning(
            '%s: not dialling endpoint %s, Addr "%s": %s',
            self._target,
            safe(_clip(key)),
            safe(_clip(addr)),
            safe(_clip(reason)),
        )


def _clip(text: str, limit: int = 200) -> str:
    """``text``, cut short if need be: enough to recognise any real key or address."""
    return text if len(text) <= limit else f"{text[:limit]}...({len(text)} characters)"
