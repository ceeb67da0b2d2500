"""etcd client URLs: parsing them as etcdctl does, and the gRPC address of each member."""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

__all__ = ["DEFAULT_URL", "member_address", "parse_urls"]

#: The etcd URL used when none is given (etcdctl's default too).
DEFAULT_URL = "http://127.0.0.1:2379"


def parse_urls(urls: str | Iterable[str]) -> tuple[str, ...]:
    """Split and validate etcd client URLs (``"http://a:2379,http://b:2379"`` or a list).

    A bare ``host:port`` means ``http://host:port``. Raises :class:`ValueError` naming the bad URL.
    """
    items = urls.split(",") if isinstance(urls, str) else list(urls)
    cleaned = tuple(u.strip() for u in items if u.strip())
    if not cleaned:
        raise ValueError("no etcd URL given; pass e.g. 'http://127.0.0.1:2379'")
    result = []
    for url in cleaned:
        full = url if "://" in url else f"http://{url}"
        parts = urlsplit(full)
        if "@" in parts.netloc:
            # Never echoed: the part before '@' may be a password.
            raise ValueError(
                "an etcd URL must not carry a user name or password; pass username= and password="
            )
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"etcd URL {url!r} must use http:// or https://")
        try:
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"etcd URL {url!r} has a bad port: {exc}") from None
        if not parts.hostname or port is None:
            raise ValueError(f"etcd URL {url!r} must name a host and a port, e.g. 127.0.0.1:2379")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(f"etcd URL {url!r} must not have a path, query or fragment")
        result.append(full)
    schemes = {urlsplit(u).scheme for u in result}
    if len(schemes) > 1:
        raise ValueError(f"etcd URLs mix http and https: {', '.join(result)}")
    if len(set(result)) != len(result):
        raise ValueError(f"etcd URLs name a member twice: {', '.join(result)}")
    return tuple(result)


def member_address(url: str) -> str:
    """The gRPC target for one member: ``host:port``, or ``[v6]:port`` (checked by parse_urls)."""
    parts = urlsplit(url)
    host, port = parts.hostname, parts.port
    assert host is not None and port is not None
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
