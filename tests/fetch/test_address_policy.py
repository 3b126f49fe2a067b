"""The pure parts of the fetch policy: numeric host spellings and which addresses are refused."""

from __future__ import annotations

import ipaddress

import pytest

from genloom.errors import UnsafeUrl
from genloom.fetch import parse_ipv4_literal, refusal


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0X7F000001", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("127.0.1", "127.0.0.1"),
        ("0", "0.0.0.0"),
        ("10.0.0.1.", "10.0.0.1"),
        ("0300.0250.0.1", "192.168.0.1"),
        ("8.8.8.8", "8.8.8.8"),
        ("1.256", "1.0.1.0"),
    ],
)
def test_numeric_hosts_are_read_as_inet_aton_reads_them(host: str, expected: str) -> None:
    assert parse_ipv4_literal(host) == ipaddress.IPv4Address(expected)


@pytest.mark.parametrize("host", ["example.com", "1e100.net", "127.0.0.1.nip.io", "xn--bcher-kva.example"])
def test_names_are_not_literals(host: str) -> None:
    assert parse_ipv4_literal(host) is None


@pytest.mark.parametrize(
    "host", ["1.2.3.4.5", "256.0.0.1", "1.16777216", "08.0.0.1", "0x", "a.1", "1..1", "4294967296"]
)
def test_malformed_numeric_hosts_are_refused(host: str) -> None:
    with pytest.raises(UnsafeUrl):
        parse_ipv4_literal(host)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.255.255.254",
        "0.0.0.0",
        "0.1.2.3",
        "10.1.2.3",
        "172.16.0.1",
        "172.31.255.255",
        "192.168.1.1",
        "100.64.0.1",
        "100.127.255.254",
        "169.254.169.254",
        "169.254.1.1",
        "192.0.0.192",
        "198.18.0.1",
        "224.0.0.1",
        "239.255.255.250",
        "240.0.0.1",
        "255.255.255.255",
        "::",
        "::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "::127.0.0.1",
        "::8.8.8.8",
        "fe80::1",
        "fc00::1",
        "fd00:ec2::254",
        "fec0::1",
        "ff02::1",
        "ff0e::1",
        "2002:7f00:1::",
        "2002:a9fe:a9fe::",
        "64:ff9b::7f00:1",
        "64:ff9b::a9fe:a9fe",
        "64:ff9b:1::808:808",
        "2001::1",
        "2001:db8::1",
    ],
)
def test_non_public_addresses_are_refused(address: str) -> None:
    assert refusal(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700::1111", "::ffff:8.8.8.8", "2002:808:808::"]
)
def test_public_addresses_pass(address: str) -> None:
    assert refusal(ipaddress.ip_address(address)) is None


def test_nat64_embedding_of_a_public_address_passes() -> None:
    assert refusal(ipaddress.ip_address("64:ff9b::808:808")) is None


def test_allow_networks_unlock_only_what_they_cover() -> None:
    allow = [ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")]
    assert refusal(ipaddress.ip_address("127.0.0.2"), allow) is None
    assert refusal(ipaddress.ip_address("::ffff:127.0.0.1"), allow) is None  # mapped: judged as IPv4
    assert refusal(ipaddress.ip_address("::1"), allow) is None
    assert refusal(ipaddress.ip_address("10.0.0.1"), allow) is not None
    assert refusal(ipaddress.ip_address("64:ff9b::7f00:1"), allow) is not None  # a relay is not unlocked


def test_metadata_addresses_stay_refused_even_when_allowed() -> None:
    allow = [ipaddress.ip_network("169.254.0.0/16"), ipaddress.ip_network("fd00::/8")]
    assert refusal(ipaddress.ip_address("169.254.1.1"), allow) is None
    assert refusal(ipaddress.ip_address("169.254.169.254"), allow) == "a cloud metadata address"
    assert refusal(ipaddress.ip_address("fd00:ec2::254"), allow) == "a cloud metadata address"
