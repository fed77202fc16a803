"""How a URL names a host (operations/kit/common.py): IPv6 in brackets once, and where the host
itself reaches a listener bound to any-address (the loopback of the same family)."""

from __future__ import annotations

import ipaddress

import pytest

from operations.kit.common import local_url_host, url_host


@pytest.mark.parametrize(
    ("given", "expected"),
    [("10.0.0.5", "10.0.0.5"), ("gpu-1.example", "gpu-1.example"), ("fd00::5", "[fd00::5]"),
     ("[fd00::5]", "[fd00::5]"), (ipaddress.ip_address("::1"), "[::1]")],
)  # fmt: skip
def test_url_host_brackets_ipv6_once(given, expected):
    assert url_host(given) == expected


@pytest.mark.parametrize(
    ("bound", "expected"),
    [("0.0.0.0", "127.0.0.1"), ("::", "[::1]"), ("10.0.0.5", "10.0.0.5"),
     ("127.0.0.2", "127.0.0.2"), ("fd00::5", "[fd00::5]"),
     (ipaddress.ip_address("0.0.0.0"), "127.0.0.1")],
)  # fmt: skip
def test_a_listener_on_any_address_is_reached_on_its_familys_loopback(bound, expected):
    assert local_url_host(bound) == expected


def test_a_name_is_not_an_address_to_listen_on():
    with pytest.raises(ValueError):
        local_url_host("gpu-1.example")
