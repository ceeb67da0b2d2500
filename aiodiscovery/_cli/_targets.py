"""Services and endpoint keys named on the command line, checked before anything is dialled."""

from __future__ import annotations

from aiodiscovery import parse_target

from ._errors import cli_words, fail

__all__ = ["KEY_HELP", "TARGET_HELP", "service_of", "target_prefix"]

TARGET_HELP = "service: foo/bar/my-service or etcd:///foo/bar/my-service"
KEY_HELP = "endpoint key, e.g. foo/bar/my-service/e1"


def target_prefix(target: str) -> str:
    """The key prefix of a service target; a bad target is a usage error."""
    try:
        return parse_target(target)
    except ValueError as exc:
        fail(cli_words(str(exc)))


def service_of(key: str) -> str:
    """The service an endpoint key belongs to: the key up to its last ``/``.

    Raises :class:`UsageError` unless ``key`` is ``<service>/<id>`` with a valid service.
    """
    service, _, ident = key.rpartition("/")
    if not service or not ident:
        fail(f"key {key!r} must look like <service>/<id>, e.g. foo/bar/my-service/e1")
    # The rule EndpointManager.check_key applies, checked before anything is dialled.
    prefix = target_prefix(service)
    if not key.startswith(prefix):
        fail(f"key {key!r} is not under its service prefix {prefix!r}; write it without etcd://")
    return service
