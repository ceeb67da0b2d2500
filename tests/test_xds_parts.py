"""The xDS server's parts without a client: resources from registry data, policies, the
bootstrap, the command's usage errors, and the package without the ``xds`` extra."""

from __future__ import annotations

import sys

import pytest

from aiodiscovery import Endpoint, EndpointSet, OutlierDetection, XdsPolicy
from aiodiscovery._xds.local import BOOTSTRAP_ENV, _check_bootstrap
from aiodiscovery._xds.resources import build_assignment, build_cluster, build_route

from .processes import run, run_cli


def test_registry_data_grpc_would_refuse_is_left_out_and_named() -> None:
    endpoints = EndpointSet(
        {
            "svc/a": Endpoint("10.0.0.1:80", "zone=z1&weight=4294967295"),
            "svc/b": Endpoint("10.0.0.2:80", "zone=z2&weight=4294967295"),
            "svc/dup": Endpoint("10.0.0.1:80"),
            "svc/host": Endpoint("backend.example:80"),
            "svc/bad": Endpoint("unix:/tmp/x"),
            "svc/weight": Endpoint("10.0.0.3:80", "weight=0"),
            "svc/six": Endpoint("[::1]:81", "health=unhealthy"),
            "svc/bind": Endpoint("0.0.0.0:80"),
            "svc/metadata-service": Endpoint("169.254.169.254:80"),
        },
        revision=7,
    )
    assignment = build_assignment("svc", endpoints, XdsPolicy())
    assert set(assignment.skipped) == {
        "svc/dup",
        "svc/host",
        "svc/bad",
        "svc/weight",
        "svc/bind",
        "svc/metadata-service",
    }
    assert "unspecified" in assignment.skipped["svc/bind"]
    assert "another key" in assignment.skipped["svc/dup"]
    assert "host name" in assignment.skipped["svc/host"]
    assert assignment.endpoints == 3
    localities = {z.locality.zone: z for z in assignment.message.endpoints}
    # Locality weights never sum past what a client accepts (2**32 - 1).
    assert sum(z.load_balancing_weight.value for z in localities.values()) <= 2**32 - 1
    assert localities[""].lb_endpoints[0].health_status == 2  # UNHEALTHY


def test_policies_become_the_cluster_and_the_route() -> None:
    policy = XdsPolicy(
        lb_policy="ring_hash",
        ring_size=(64, 4096),
        outlier_detection=OutlierDetection(success_rate_stdev_factor=1.5),
        retry_on=("unavailable",),
        num_retries=3,
        max_requests=100,
    )
    cluster = build_cluster("svc", policy)
    assert cluster.ring_hash_lb_config.minimum_ring_size.value == 64
    assert cluster.outlier_detection.success_rate_stdev_factor.value == 1500
    assert cluster.circuit_breakers.thresholds[0].max_requests.value == 100
    route = build_route("svc", policy).virtual_hosts[0].routes[0].route
    assert (
        route.retry_policy.retry_on == "unavailable" and route.retry_policy.num_retries.value == 3
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lb_policy": "fastest"}, "lb_policy"),
        ({"ring_size": (10, 5)}, "ring_size"),
        ({"retry_on": "unavailable"}, "tuple"),
        ({"retry_on": ("not-found",)}, "retry_on"),
        ({"num_retries": 9}, "num_retries"),
        ({"retry_backoff": (1.0, 0.5)}, "retry_backoff"),
        ({"max_requests": 0}, "max_requests"),
    ],
)
def test_a_policy_a_client_would_refuse_is_an_error_at_once(
    kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises((TypeError, ValueError), match=message):
        XdsPolicy(**kwargs)  # type: ignore[arg-type]


def test_another_control_plane_in_the_environment_is_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(BOOTSTRAP_ENV, '{"xds_servers": [{"server_uri": "127.0.0.1:1"}]}')
    with pytest.raises(RuntimeError, match="one for the whole process"):
        _check_bootstrap()


_WITHOUT_EXTRA = """
import asyncio, sys

class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("envoy", "xds", "udpa", "validate"):
            raise ImportError(f"no module named {name!r}")

sys.meta_path.insert(0, Blocked())
import aiodiscovery
assert not [m for m in sys.modules if m.split(".")[0] in ("envoy", "xds", "udpa")]
try:
    asyncio.run(aiodiscovery.XdsServer().start())
except RuntimeError as exc:
    print(exc)
"""


def test_without_the_extra_nothing_of_it_is_imported_and_starting_says_what_to_install() -> None:
    result = run([sys.executable, "-c", _WITHOUT_EXTRA])
    assert result.returncode == 0, result.stderr
    assert "pip install 'aiodiscovery[xds]'" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--listen", "0.0.0.0:18000"], "not a loopback address: add --allow-remote"),
        (["--listen", "localhost"], "expected HOST:PORT"),
        (["--tls-cert", "cert.pem"], "--tls-cert and --tls-key go together"),
        (["--retry-on", "not-found"], "retry_on"),
    ],
)
def test_xds_server_usage_errors(args: list[str], message: str) -> None:
    result = run_cli("--endpoints", "http://127.0.0.1:1", "xds-server", *args)
    assert result.returncode == 2
    assert message in result.stderr


def test_a_hash_header_goes_with_ring_hash_and_into_the_route() -> None:
    with pytest.raises(ValueError, match="ring_hash only"):
        XdsPolicy(hash_header="x-user")
    with pytest.raises(ValueError, match="lower-case header name"):
        XdsPolicy(lb_policy="ring_hash", hash_header="X-User")
    policy = XdsPolicy(lb_policy="ring_hash", hash_header="x-user")
    action = build_route("svc", policy).virtual_hosts[0].routes[0].route
    assert action.hash_policy[0].header.header_name == "x-user"
