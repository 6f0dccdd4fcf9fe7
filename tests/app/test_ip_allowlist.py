"""Webhook source IPs: the allowlist admits only what it lists, and the client IP is unspoofable."""

import pytest

from wallet_api.client_address import IpAllowlist, client_ip


def test_a_single_ip_admits_exactly_that_address():
    allowlist = IpAllowlist.parse("52.35.210.16")

    assert allowlist.allows("52.35.210.16")
    assert not allowlist.allows("52.35.210.17")


def test_a_cidr_range_admits_its_addresses_only():
    allowlist = IpAllowlist.parse("52.18.0.0/16")

    assert allowlist.allows("52.18.0.1")
    assert allowlist.allows("52.18.255.254")
    assert not allowlist.allows("52.19.0.1")


def test_a_wildcard_covers_its_trailing_octets():
    allowlist = IpAllowlist.parse("10.0.*.*, 192.168.1.*")

    assert allowlist.allows("10.0.0.1")
    assert allowlist.allows("10.0.255.255")
    assert not allowlist.allows("10.1.0.1")
    assert allowlist.allows("192.168.1.77")
    assert not allowlist.allows("192.168.2.77")


def test_ipv6_exact_and_cidr_entries():
    allowlist = IpAllowlist.parse("2001:db8::1, 2001:db8:aaaa::/48")

    assert allowlist.allows("2001:db8::1")
    assert allowlist.allows("2001:0db8:0000:0000:0000:0000:0000:0001")  # other spelling
    assert not allowlist.allows("2001:db8::2")
    assert allowlist.allows("2001:db8:aaaa:1::5")
    assert not allowlist.allows("2001:db8:aaab::5")


def test_an_ipv4_mapped_ipv6_address_meets_the_ipv4_rules():
    allowlist = IpAllowlist.parse("1.2.3.4, 10.0.0.0/8, 172.16.*.*")

    assert allowlist.allows("::ffff:1.2.3.4")
    assert allowlist.allows("::ffff:10.9.8.7")
    assert allowlist.allows("::ffff:172.16.3.3")
    assert not allowlist.allows("::ffff:1.2.3.5")


def test_an_ipv4_mapped_entry_admits_the_plain_ipv4_address():
    allowlist = IpAllowlist.parse("::ffff:1.2.3.4")

    assert allowlist.allows("1.2.3.4")
    assert allowlist.allows("::ffff:1.2.3.4")


def test_ip_versions_never_match_each_other():
    assert not IpAllowlist.parse("0.0.0.0/0").allows("2001:db8::1")
    assert not IpAllowlist.parse("::/0").allows("1.2.3.4")


@pytest.mark.parametrize("ip", ["", "not-an-ip", "1.2.3", "999.1.1.1", "1.2.3.4.5", "[::1"])
def test_an_unparsable_address_is_not_allowed(ip):
    assert not IpAllowlist.parse("0.0.0.0/0, ::/0").allows(ip)


def test_addresses_with_ports_or_brackets_are_read_sanely():
    allowlist = IpAllowlist.parse("1.2.3.4, 2001:db8::1")

    assert allowlist.allows(" 1.2.3.4:8080 ")
    assert allowlist.allows("[2001:db8::1]")
    assert allowlist.allows("[2001:db8::1]:443")


@pytest.mark.parametrize("spec", ["", "   ", " , ,"])
def test_an_empty_allowlist_allows_nothing(spec):
    allowlist = IpAllowlist.parse(spec)

    assert allowlist.is_empty
    assert not allowlist.allows("1.2.3.4")
    assert not allowlist.allows("::1")


def test_a_trailing_comma_is_not_an_error():
    allowlist = IpAllowlist.parse("1.2.3.4,")

    assert not allowlist.is_empty
    assert allowlist.allows("1.2.3.4")


@pytest.mark.parametrize(
    "bad",
    [
        "10.*.0.*",  # wildcard in the middle
        "*.0.0.1",
        "10.0.1*.*",  # partial-octet wildcard
        "10.*",  # not four octets
        "*",
        "2001:db8::*",  # wildcards are IPv4 only
        "10.0.256.*",
        "10.0.0.1/8",  # host bits set: almost certainly a typo
        "10.0.0.0/33",
        "example.com",
        "1.2.3",
        "fe80::1%eth0",
        "010.0.0.1",  # leading zeros are ambiguous (octal?)
    ],
)
def test_a_bad_entry_raises_a_value_error_naming_it(bad):
    with pytest.raises(ValueError) as excinfo:
        IpAllowlist.parse(f"1.2.3.4, {bad}, 5.6.7.8")

    assert repr(bad) in str(excinfo.value)


# --------------------------------------------------------------------------- client_ip


def test_without_trusted_proxies_forwarding_headers_are_ignored_as_spoofable():
    ip = client_ip(
        remote_addr="203.0.113.9",
        x_forwarded_for="52.18.0.1",
        x_real_ip="52.18.0.2",
        trusted_proxy_count=0,
    )

    assert ip == "203.0.113.9"


def test_one_trusted_proxy_means_the_right_most_forwarded_address():
    # The client wrote "52.18.0.1" itself; the proxy appended the peer it really saw.
    ip = client_ip(
        remote_addr="10.0.0.2",
        x_forwarded_for="52.18.0.1, 198.51.100.7",
        x_real_ip=None,
        trusted_proxy_count=1,
    )

    assert ip == "198.51.100.7"


def test_two_trusted_proxies_mean_the_second_address_from_the_right():
    # CDN appended the client (198.51.100.7); the router appended the CDN edge (172.70.1.1).
    ip = client_ip(
        remote_addr="10.0.0.2",
        x_forwarded_for="52.18.0.1,198.51.100.7 , 172.70.1.1",
        x_real_ip="52.18.0.3",
        trusted_proxy_count=2,
    )

    assert ip == "198.51.100.7"


def test_too_few_forwarded_entries_fall_back_to_x_real_ip_then_the_socket():
    assert (
        client_ip(
            remote_addr="10.0.0.2",
            x_forwarded_for="198.51.100.7",
            x_real_ip="198.51.100.8",
            trusted_proxy_count=2,
        )
        == "198.51.100.8"
    )
    assert (
        client_ip(
            remote_addr="10.0.0.2", x_forwarded_for=None, x_real_ip=None, trusted_proxy_count=1
        )
        == "10.0.0.2"
    )
    assert (
        client_ip(
            remote_addr="10.0.0.2", x_forwarded_for=" , ", x_real_ip="junk", trusted_proxy_count=1
        )
        == "10.0.0.2"
    )


def test_the_chosen_hop_is_normalised_and_loses_its_port():
    assert (
        client_ip(
            remote_addr="10.0.0.2",
            x_forwarded_for="[2001:DB8::7]:5000, 10.0.0.9",
            x_real_ip=None,
            trusted_proxy_count=2,
        )
        == "2001:db8::7"
    )
    assert (
        client_ip(
            remote_addr="10.0.0.2",
            x_forwarded_for="198.51.100.7:61000",
            x_real_ip=None,
            trusted_proxy_count=1,
        )
        == "198.51.100.7"
    )


def test_a_garbage_trusted_hop_gives_no_ip_instead_of_a_spoofable_one():
    ip = client_ip(
        remote_addr="10.0.0.2",
        x_forwarded_for="52.18.0.1, unknown",
        x_real_ip="52.18.0.1",
        trusted_proxy_count=1,
    )

    assert ip is None


def test_no_address_at_all_gives_none():
    assert (
        client_ip(remote_addr=None, x_forwarded_for=None, x_real_ip=None, trusted_proxy_count=0)
        is None
    )


def test_a_negative_proxy_count_is_a_configuration_error():
    with pytest.raises(ValueError):
        client_ip(remote_addr="1.2.3.4", x_forwarded_for=None, x_real_ip=None, trusted_proxy_count=-1)
