"""Retry rules from the standard service config (gRFC A6), and the retry throttle.

``resolve(options=[("grpc.service_config", json)])`` may carry ``methodConfig[].retryPolicy``
and ``retryThrottling``. The pool honours them itself, picking each attempt anew, so the
subchannels must not: :func:`retry_config` parses them and returns the options for the
subchannels' own channels with the retry parts taken out, and the other parts the pool does
itself (``healthCheckConfig``, the balancer: see :mod:`aiodiscovery._pool.serviceconfig`). The
rest of the service config, such as ``timeout`` or ``waitForReady``, still applies to each
attempt there.
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, Decimal
from typing import Any

import grpc

from .._balancer.callstatus import OK, code_value
from .._logsafe import Labelled

__all__ = [
    "MAX_ATTEMPTS",
    "MethodRetry",
    "RetryConfig",
    "RetryPolicy",
    "RetryThrottle",
    "invalid_config",
    "load_document",
    "pushback_delay",
    "retry_config",
]

logger = logging.getLogger("aiodiscovery.pool")

SERVICE_CONFIG = "grpc.service_config"
ENABLE_RETRIES = "grpc.enable_retries"
# gRFC A6: a client caps maxAttempts (the service config may come from far away).
MAX_ATTEMPTS = 5
# A proto3 JSON Duration: decimal seconds with up to nine fraction digits, then "s".
_DURATION = re.compile(r"^(-?)(\d*)(?:\.(\d{0,9}))?s$")
# The spread of a retry's delay around its backoff (gRFC A6, grpc core's retry backoff).
_JITTER = 0.2
_CODES = {code.name: code for code in grpc.StatusCode}
# gRFC A6: the server's pushback is a non-negative int32 in decimal; "[0-9]" is ASCII only (where
# str.isdigit() also takes "²", which int() then refuses). A leading zero is not the canonical form.
_PUSHBACK = re.compile(r"0|[1-9][0-9]{0,9}")
MAX_PUSHBACK_MS = 2**31 - 1
_BY_NUMBER = {code_value(code): code for code in grpc.StatusCode}


@dataclass(frozen=True)
class RetryPolicy:
    """One method's ``retryPolicy``; ``maxAttempts`` already capped at :data:`MAX_ATTEMPTS`."""

    max_attempts: int
    initial_backoff: float
    max_backoff: float
    backoff_multiplier: float
    # Status code numbers (what the status readers give).
    retryable_codes: frozenset[int]

    def backoff(self, retries: int) -> float:
        """The delay before retry number ``retries + 1``.

        gRFC A6 as revised in 2024, and grpc core: ``random(0.8, 1.2)`` times
        ``min(initialBackoff * backoffMultiplier ** retries, maxBackoff)``. The older text drew
        from ``[0, backoff]``, which let a retry fire at once.
        """
        backoff = min(self.initial_backoff * self.backoff_multiplier**retries, self.max_backoff)
        return backoff * random.uniform(1 - _JITTER, 1 + _JITTER)


@dataclass(frozen=True)
class MethodRetry:
    """How the pool retries the calls of one method."""

    # None: only a transparent retry of a call that never left (see _retrying).
    policy: RetryPolicy | None
    # The method config's ``timeout``: bounds all attempts together, like the call's deadline.
    timeout: float | None = None


class RetryThrottle:
    """gRFC A6's token bucket: retries stop while failures outweigh successes.

    Tokens start at ``max_tokens``; a failed attempt with a retryable code takes one, a
    successful call gives back ``token_ratio``; a retry is allowed only while more than half the
    tokens are left. Counted in thousandths of a token, in integers, as grpc core does: a
    float sum of ratios would land on the wrong side of the threshold now and then.
    """

    __slots__ = ("_max", "_milli", "_ratio", "_threshold", "log", "refusing")

    def __init__(self, max_tokens: float, token_ratio: float, log: Labelled) -> None:
        self._max = round(max_tokens * 1000)
        self._ratio = round(token_ratio * 1000)
        self._threshold = self._max // 2
        self._milli = self._max
        # Whether a retry was refused since the tokens were last above the threshold.
        self.refusing = False
        # For the log line that says retries resume.
        self.log = log

    @property
    def max_tokens(self) -> float:
        """``maxTokens``."""
        return self._max / 1000

    @property
    def token_ratio(self) -> float:
        """``tokenRatio``, three decimals kept."""
        return self._ratio / 1000

    @property
    def tokens(self) -> float:
        """The tokens left."""
        return self._milli / 1000

    def success(self) -> None:
        """Count a successful call."""
        self._milli = min(self._milli + self._ratio, self._max)
        if self.refusing and self._milli > self._threshold:
            self.refusing = False
            self.log.info("retries resume (retryThrottling)")

    def refuse(self) -> bool:
        """Note a refused retry; True if it is the first since retries were last allowed."""
        first = not self.refusing
        self.refusing = True
        return first

    def failure(self) -> bool:
        """Count a failed attempt that could be retried; True if a retry is still allowed."""
        self._milli = max(0, self._milli - 1000)
        return self._milli > self._threshold

    @property
    def throttling(self) -> bool:
        """Whether retries are being refused now."""
        return self._milli <= self._threshold


@dataclass
class RetryConfig:
    """The pool's retry rules: per method, the throttle, and whether retries happen at all."""

    # (service, method) -> rules; ("svc", "") for a whole service, ("", "") for every method.
    methods: dict[tuple[str, str], MethodRetry] = field(default_factory=dict)
    throttle: RetryThrottle | None = None
    # False with the channel option grpc.enable_retries=0: no retries, not even transparent ones.
    enabled: bool = True

    def for_method(self, path: str) -> MethodRetry | None:
        """The rules for the method ``/package.Service/Method``; None if the pool never retries."""
        if not self.enabled:
            return None
        service, _, method = path.lstrip("/").partition("/")
        methods = self.methods
        return (
            methods.get((service, method))
            or methods.get((service, ""))
            or methods.get(("", ""))
            or _TRANSPARENT_ONLY
        )


_TRANSPARENT_ONLY = MethodRetry(None)


def retry_config(
    options: Iterable[tuple[str, Any]], log: Labelled
) -> tuple[RetryConfig, list[tuple[str, Any]]]:
    """Parse the retry parts of ``options``; return them and the options for the subchannels.

    ``log`` is the pool's: the throttle says through it when retries resume.

    Raises ``ValueError`` naming the field when the service config is not valid JSON or its
    retry parts break gRFC A6's rules.
    """
    config = RetryConfig()
    stripped: list[tuple[str, Any]] = []
    document: Any = None
    for key, value in options:
        if key == SERVICE_CONFIG:
            document = load_document(value)
            stripped.append((key, json.dumps(_without_retries(document), separators=(",", ":"))))
            continue
        if key == ENABLE_RETRIES:
            config.enabled = bool(value)
        stripped.append((key, value))
    if document is not None:
        config.methods = _method_rules(document)
        config.throttle = _throttle(document.get("retryThrottling"), log)
    if config.enabled and any(rules.policy is not None for rules in config.methods.values()):
        # grpc core's retry layer replaces a grpc-previous-rpc-attempts header given by the
        # application with its own count (none on one attempt): the pool's retries must pass
        # through the subchannels without it. The pool retries these calls itself.
        stripped = [(k, v) for k, v in stripped if k != ENABLE_RETRIES]
        stripped.append((ENABLE_RETRIES, 0))
    return config, stripped


def invalid_config(message: str) -> ValueError:
    """The error for a service config that breaks the rules (JSON content: a ValueError)."""
    return ValueError(f"invalid {SERVICE_CONFIG}: {message}")


def load_document(value: Any) -> dict[str, Any]:
    """The service config document of the option's ``value`` (a JSON object in a string)."""
    if not isinstance(value, str | bytes):
        raise invalid_config(f"it must be a JSON string, not {type(value).__name__}")
    try:
        document = json.loads(value)
    except ValueError as exc:
        raise invalid_config(f"not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise invalid_config("it must be a JSON object")
    return document


# What the pool does itself, so the subchannels' own channels must not do it again: retries
# (they would multiply attempts on one endpoint), health checks (gRFC A17: each endpoint's core
# channel would refuse calls the pool still sends it) and the choice of balancer.
_POOL_KEYS = frozenset(
    {"retryThrottling", "healthCheckConfig", "loadBalancingConfig", "loadBalancingPolicy"}
)


def _without_retries(document: Mapping[str, Any]) -> dict[str, Any]:
    """The service config each subchannel gets: without what the pool does (``_POOL_KEYS``,
    retryPolicy, hedgingPolicy)."""
    copy = {k: v for k, v in document.items() if k not in _POOL_KEYS}
    configs = document.get("methodConfig")
    if isinstance(configs, list):
        copy["methodConfig"] = [
            {k: v for k, v in entry.items() if k not in ("retryPolicy", "hedgingPolicy")}
            if isinstance(entry, dict)
            else entry
            for entry in configs
        ]
    return copy


def _method_rules(document: Mapping[str, Any]) -> dict[tuple[str, str], MethodRetry]:
    configs = document.get("methodConfig", [])
    if not isinstance(configs, list):
        raise invalid_config("methodConfig must be a list")
    rules: dict[tuple[str, str], MethodRetry] = {}
    for i, entry in enumerate(configs):
        where = f"methodConfig[{i}]"
        if not isinstance(entry, dict):
            raise invalid_config(f"{where} must be an object")
        if "hedgingPolicy" in entry:
            logger.warning("%s.hedgingPolicy is not supported by the pool; ignored", where)
        policy = timeout = None
        if "retryPolicy" in entry:
            policy = _policy(entry["retryPolicy"], f"{where}.retryPolicy")
        if "timeout" in entry:
            timeout = _duration(entry["timeout"], f"{where}.timeout")
        for name in _names(entry.get("name", []), where):
            if name in rules:
                raise invalid_config(f"{where}: duplicate method name {'/'.join(name) or '(all)'}")
            rules[name] = MethodRetry(policy, timeout)
    return rules


def _names(names: Any, where: str) -> list[tuple[str, str]]:
    if not isinstance(names, list):
        raise invalid_config(f"{where}.name must be a list")
    result = []
    for j, name in enumerate(names):
        if not isinstance(name, dict):
            raise invalid_config(f"{where}.name[{j}] must be an object")
        service = name.get("service", "")
        method = name.get("method", "")
        if not isinstance(service, str) or not isinstance(method, str):
            raise invalid_config(f"{where}.name[{j}]: service and method must be strings")
        if method and not service:
            raise invalid_config(f"{where}.name[{j}]: a method needs its service")
        result.append((service, method))
    return result


def _policy(value: Any, where: str) -> RetryPolicy:
    if not isinstance(value, dict):
        raise invalid_config(f"{where} must be an object")
    attempts = value.get("maxAttempts")
    if (
        isinstance(attempts, bool)
        or not isinstance(attempts, int | float)
        or attempts != int(attempts)
        or attempts < 2
    ):
        raise invalid_config(f"{where}.maxAttempts must be an integer >= 2, not {attempts!r}")
    initial = _duration(value.get("initialBackoff"), f"{where}.initialBackoff")
    maximum = _duration(value.get("maxBackoff"), f"{where}.maxBackoff")
    multiplier = value.get("backoffMultiplier")
    if (
        isinstance(multiplier, bool)
        or not isinstance(multiplier, int | float)
        or not math.isfinite(multiplier)
        or multiplier <= 0
    ):
        raise invalid_config(f"{where}.backoffMultiplier must be a number > 0, not {multiplier!r}")
    if initial <= 0 or maximum <= 0:
        raise invalid_config(f"{where}: initialBackoff and maxBackoff must be > 0")
    codes = value.get("retryableStatusCodes")
    if not isinstance(codes, list) or not codes:
        raise invalid_config(f"{where}.retryableStatusCodes must be a non-empty list")
    return RetryPolicy(
        max_attempts=min(int(attempts), MAX_ATTEMPTS),
        initial_backoff=initial,
        max_backoff=maximum,
        backoff_multiplier=float(multiplier),
        retryable_codes=frozenset(
            _code(c, f"{where}.retryableStatusCodes[{k}]") for k, c in enumerate(codes)
        ),
    )


def _code(value: Any, where: str) -> int:
    code: grpc.StatusCode | None = None
    if isinstance(value, str):
        code = _CODES.get(value.upper())
    elif isinstance(value, int) and not isinstance(value, bool):
        code = _BY_NUMBER.get(value)
    if code is None or code_value(code) == OK:
        raise invalid_config(f"{where}: {value!r} is not a status code that can be retried")
    return code_value(code)


def _duration(value: Any, where: str) -> float:
    """Seconds from a proto3 JSON Duration such as ``"0.1s"`` or ``"2s"``."""
    match = _DURATION.match(value) if isinstance(value, str) else None
    if match is None or not (match.group(2) or match.group(3)):
        raise invalid_config(f'{where} must be a duration such as "0.5s", not {value!r}')
    sign, whole, fraction = match.groups()
    seconds = int(whole or "0") + int((fraction or "0").ljust(9, "0")) / 1e9
    if sign:
        raise invalid_config(f"{where} must not be negative, not {value!r}")
    return seconds


def _throttle(value: Any, log: Labelled) -> RetryThrottle | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise invalid_config("retryThrottling must be an object")
    tokens = value.get("maxTokens")
    # grpc core reads maxTokens as an unsigned integer (10.0 is refused); A6 caps it at 1000.
    if isinstance(tokens, bool) or not isinstance(tokens, int) or not 0 < tokens <= 1000:
        raise invalid_config(
            f"retryThrottling.maxTokens must be an integer in 1..1000, not {tokens!r}"
        )
    ratio = value.get("tokenRatio")
    if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not math.isfinite(ratio):
        raise invalid_config(f"retryThrottling.tokenRatio must be a number > 0, not {ratio!r}")
    # A6 and grpc core keep three decimals of tokenRatio, truncated: 0.0009 is 0, refused.
    # The float's shortest decimal form is what the JSON said, so nothing is lost in a round.
    milli = int(Decimal(repr(float(ratio))).scaleb(3).to_integral_value(rounding=ROUND_DOWN))
    if milli <= 0:
        raise invalid_config(
            f"retryThrottling.tokenRatio must be at least 0.001 (three decimals), not {ratio!r}"
        )
    return RetryThrottle(float(tokens), milli / 1000, log)


def pushback_delay(value: str | bytes) -> float | None:
    """The wait in seconds a ``grpc-retry-pushback-ms`` value asks for; None means "do not retry".

    gRFC A6: the value is a non-negative int32 in ASCII decimal digits; anything else (negative,
    empty, beyond 2**31 - 1, other digits, spaces, a sign) is the server asking for no retry.
    """
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
    if _PUSHBACK.fullmatch(text) is None or int(text) > MAX_PUSHBACK_MS:
        return None
    return int(text) / 1000
