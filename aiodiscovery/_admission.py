"""Which endpoints of a set the pool dials, and why it skips the others.

Registry data is untrusted: an endpoint whose ``Addr`` is not a plain network address (see
:mod:`aiodiscovery._address`), that the operator's ``address_filter`` refuses, or whose
subchannel cannot be made, is skipped. Each (key, address) pair is logged once, while it lasts,
and counted; the other endpoints are served as if it were not there.
"""

from __future__ import annotations

import bisect
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
    # The metadata of the first key (in key order) naming the address.
    metadata: object
    keys: list[str] = field(default_factory=list)
    # The newest etcd mod revision among those keys: it grows when the address is registered
    # again, even with the same value.
    revision: int = 0


class Admission:
    """Sorts endpoints into addresses to dial (:attr:`wanted`) and endpoints to skip.

    :meth:`apply` follows each endpoint set. When the set says which keys changed since the last
    one (see :meth:`EndpointSet.changed_since`), only those are looked at, so a change costs the
    same whatever the size of the service; otherwise the whole set is sorted afresh.
    """

    def __init__(self, target: str, address_filter: AddressFilter | None) -> None:
        self._target = target
        self._filter = address_filter
        #: The addresses to dial, by address text: in key order after a full pass, addresses
        #: registered later after them.
        self.wanted: dict[str, Wanted] = {}
        # Address text -> the parsed address, or why it is refused.
        self._verdicts: dict[str, Address | str] = {}
        # The address each admitted key names.
        self._addresses: dict[str, str] = {}
        # Skipped key -> the address it was warned about, while that lasts.
        self._warned: dict[str, str] = {}
        self._snapshot: EndpointSet | None = None
        self.skipped: dict[str, str] = {}
        self.skipped_total = 0

    def apply(self, snapshot: EndpointSet) -> set[str] | None:
        """Follow ``snapshot``; return the addresses whose :class:`Wanted` changed or went.

        None means that the whole set was sorted afresh: any address may have changed.
        """
        previous, self._snapshot = self._snapshot, snapshot
        keys = None if previous is None else snapshot.changed_since(previous)
        if keys is None:
            self._select_all(snapshot)
            return None
        touched: set[str] = set()
        for key in sorted(keys):
            self._forget(key, snapshot, touched)
            entry = snapshot.entry(key)
            if entry is not None:
                self._admit(key, entry.endpoint.addr, snapshot, touched)
            if key not in self.skipped:
                self._warned.pop(key, None)
        if len(self._verdicts) > 2 * (len(self.wanted) + len(self.skipped)) + 64:
            # Verdicts of addresses no key names any more: drop them now and then, not per change.
            live = set(self.wanted) | {snapshot[key].addr for key in self.skipped}
            self._verdicts = {a: v for a, v in self._verdicts.items() if a in live}
        return touched

    def _select_all(self, snapshot: EndpointSet) -> None:
        verdicts: dict[str, Address | str] = {}
        wanted: dict[str, Wanted] = {}
        addresses: dict[str, str] = {}
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
            addresses[key] = addr
            revision = snapshot.mod_revision(key)
            want = wanted.get(addr)
            if want is None:
                wanted[addr] = Wanted(verdict, endpoint.metadata, [key], revision)
            else:
                want.keys.append(key)
                want.revision = max(want.revision, revision)
        self._verdicts, self.wanted, self._addresses = verdicts, wanted, addresses
        current = {key: snapshot[key].addr for key in self.skipped}
        self._warned = {k: a for k, a in self._warned.items() if current.get(k) == a}
        for key, addr in current.items():
            self._warn(key, addr, self.skipped[key])

    def _forget(self, key: str, snapshot: EndpointSet, touched: set[str]) -> None:
        """Take ``key``'s old endpoint out of :attr:`wanted` and :attr:`skipped`."""
        addr = self._addresses.pop(key, None)
        if addr is None:
            self.skipped.pop(key, None)
            return
        touched.add(addr)
        want = self.wanted[addr]
        want.keys.remove(key)
        if not want.keys:
            del self.wanted[addr]
            return
        _refresh(want, snapshot)

    def _admit(self, key: str, addr: str, snapshot: EndpointSet, touched: set[str]) -> None:
        verdict = self._verdicts.get(addr)
        if verdict is None:
            verdict = self._verdicts[addr] = self._judge(addr)
        if isinstance(verdict, str):
            self.skipped[key] = verdict
            self._warn(key, addr, verdict)
            return
        self._addresses[key] = addr
        touched.add(addr)
        want = self.wanted.get(addr)
        if want is None:
            entry = snapshot.entry(key)
            assert entry is not None
            self.wanted[addr] = Wanted(verdict, entry.endpoint.metadata, [key], entry.mod_revision)
            return
        bisect.insort(want.keys, key)
        _refresh(want, snapshot)

    def refuse(self, addr: str, want: Wanted, reason: str) -> None:
        """Skip ``addr`` from now on (its subchannel could not be made, for ``reason``)."""
        self._verdicts[addr] = reason
        self.wanted.pop(addr, None)
        for key in want.keys:
            self._addresses.pop(key, None)
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
        if self._warned.get(key) == addr:
            return
        self._warned[key] = addr
        self.skipped_total += 1
        logger.warning(
            '%s: not dialling endpoint %s, Addr "%s": %s',
            self._target,
            safe(_clip(key)),
            safe(_clip(addr)),
            safe(_clip(reason)),
        )


def _refresh(want: Wanted, snapshot: EndpointSet) -> None:
    """Re-read what the keys of ``want`` say: the first key's metadata, the newest revision."""
    want.metadata = snapshot[want.keys[0]].metadata
    want.revision = max(snapshot.mod_revision(key) for key in want.keys)


def _clip(text: str, limit: int = 200) -> str:
    """``text``, cut short if need be: enough to recognise any real key or address."""
    return text if len(text) <= limit else f"{text[:limit]}...({len(text)} characters)"
