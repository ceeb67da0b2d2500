"""Which endpoints of a set the pool dials, and why it skips the others.

Registry data is untrusted: an endpoint whose ``Addr`` is not a plain network address (see
:mod:`.address`), that the operator's ``address_filter`` refuses (without one: an unspecified,
link-local or multicast IP address, see :func:`.address.address_refusal`), or whose
subchannel cannot be made, is skipped. Each (key, address) pair is logged once, while it lasts,
and counted; the other endpoints are served as if it were not there.
"""

from __future__ import annotations

import bisect
import logging
from dataclasses import dataclass, field

from .._codec.endpointset import EndpointSet
from .._logsafe import safe
from .address import Address, AddressFilter, address_refusal, parse_address

__all__ = ["Admission", "Wanted"]

logger = logging.getLogger("aiodiscovery.pool")


@dataclass(slots=True)
class Wanted:
    """An address the pool may hold, with what the registry says about it.

    Kept for every dialable address of the service (100,000 of them, maybe, when the pool holds
    a subset), so it keeps the address as text: :attr:`address` parses it again when dialled.
    """

    addr: str
    # The metadata of the first key (in key order) naming the address.
    metadata: object
    keys: list[str] = field(default_factory=list)
    # The newest etcd mod revision among those keys: it grows when the address is registered
    # again, even with the same value.
    revision: int = 0

    @property
    def address(self) -> Address:
        """The address to dial (admitted, so it parses)."""
        return parse_address(self.addr)


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
        # Address text -> why it is refused (an address in wanted is admitted).
        self._refused: dict[str, str] = {}
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
        if len(self._refused) > 2 * len(self.skipped) + 64:
            # Verdicts of addresses no key names any more: drop them now and then, not per change.
            live = {snapshot[key].addr for key in self.skipped}
            self._refused = {a: v for a, v in self._refused.items() if a in live}
        return touched

    def _select_all(self, snapshot: EndpointSet) -> None:
        refused: dict[str, str] = {}
        wanted: dict[str, Wanted] = {}
        addresses: dict[str, str] = {}
        old = self.wanted
        self.skipped = {}
        for key, endpoint in snapshot.items():
            addr = endpoint.addr
            want = wanted.get(addr)
            revision = snapshot.mod_revision(key)
            if want is not None:
                want.keys.append(key)
                want.revision = max(want.revision, revision)
            elif addr in old or (reason := self._verdict(addr, refused)) is None:
                wanted[addr] = Wanted(addr, endpoint.metadata, [key], revision)
            else:
                self.skipped[key] = reason
                continue
            addresses[key] = addr
        self._refused, self.wanted, self._addresses = refused, wanted, addresses
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
        want = self.wanted.get(addr)
        if want is None and (reason := self._verdict(addr, self._refused)) is not None:
            self.skipped[key] = reason
            self._warn(key, addr, reason)
            return
        self._addresses[key] = addr
        touched.add(addr)
        if want is None:
            entry = snapshot.entry(key)
            assert entry is not None
            self.wanted[addr] = Wanted(addr, entry.endpoint.metadata, [key], entry.mod_revision)
            return
        bisect.insort(want.keys, key)
        _refresh(want, snapshot)

    def refuse(self, addr: str, want: Wanted, reason: str) -> None:
        """Skip ``addr`` from now on (its subchannel could not be made, for ``reason``)."""
        self._refused[addr] = reason
        self.wanted.pop(addr, None)
        for key in want.keys:
            self._addresses.pop(key, None)
            self.skipped[key] = reason
            self._warn(key, addr, reason)

    def _verdict(self, addr: str, refused: dict[str, str]) -> str | None:
        """Why ``addr`` may not be dialled (None: it may); a refusal is noted in ``refused``."""
        reason = self._refused.get(addr)
        if reason is None:
            reason = address_refusal(addr, self._filter)
        if reason is not None:
            refused[addr] = reason
        return reason

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
