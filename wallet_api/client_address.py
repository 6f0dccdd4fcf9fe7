"""The client's address behind trusted proxies, and IP allowlists.

Every part of the app that cares who is calling (rate limits, the webhook allowlist, the admin
access log) reads `request.remote_addr`, which `TrustedProxyClientAddress` sets once per request:
the address written by our outermost trusted proxy (a configured hop count from the right of
X-Forwarded-For), never the left-most entry, which any client can write.

MoonPay does not publish its webhook source addresses, so the webhook allowlist is optional
defence in depth; the signature is the real control.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

__all__ = ["IpAllowlist", "TrustedProxyClientAddress", "client_ip"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _parse_address(value: str | None) -> IPAddress | None:
    """Parse ``1.2.3.4``, ``1.2.3.4:80``, ``[::1]:80`` as proxies write them; None if invalid."""
    if value is None:
        return None
    text = value.strip()
    if text.startswith("["):
        # "[v6]" or "[v6]:port": the brackets exist precisely to separate the port.
        end = text.find("]")
        if end == -1:
            return None
        rest = text[end + 1 :]
        if rest and not (rest.startswith(":") and rest[1:].isdigit()):
            return None
        text = text[1:end]
    elif text.count(":") == 1:
        # Exactly one colon can only be IPv4 with a port; bare IPv6 always has two or more.
        host, _, port = text.partition(":")
        if not port.isdigit():
            return None
        text = host
    if "%" in text:
        # A zone id ("fe80::1%eth0") names a local interface, never a remote client.
        text = text.split("%", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _parse_wildcard(entry: str) -> IPNetwork:
    """Turn ``10.0.*.*`` into ``10.0.0.0/16``; ``*`` only as whole trailing octets."""
    octets = entry.split(".")
    if len(octets) != 4:
        raise ValueError(f"invalid IP allowlist entry {entry!r}: a wildcard needs four octets")
    fixed = 4
    while fixed > 0 and octets[fixed - 1] == "*":
        fixed -= 1
    if any("*" in octet for octet in octets[:fixed]):
        raise ValueError(
            f"invalid IP allowlist entry {entry!r}: '*' may only replace whole trailing octets"
        )
    base = ".".join(octets[:fixed] + ["0"] * (4 - fixed))
    try:
        return ipaddress.IPv4Network(f"{base}/{fixed * 8}")
    except ValueError as exc:
        raise ValueError(f"invalid IP allowlist entry {entry!r}: {exc}") from None


def _parse_entry(entry: str) -> IPNetwork:
    """Parse one allowlist entry (exact IP, CIDR or IPv4 wildcard) into a network."""
    if "*" in entry:
        return _parse_wildcard(entry)
    if "%" in entry:
        raise ValueError(f"invalid IP allowlist entry {entry!r}: zone ids are not allowed")
    try:
        if "/" in entry:
            # strict: "10.0.0.1/8" is almost certainly a typo, so report it instead of
            # silently widening it to 10.0.0.0/8.
            return ipaddress.ip_network(entry, strict=True)
        address = ipaddress.ip_address(entry)
    except ValueError as exc:
        raise ValueError(f"invalid IP allowlist entry {entry!r}: {exc}") from None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        # Store "::ffff:1.2.3.4" as the IPv4 address it names, so both spellings match.
        address = address.ipv4_mapped
    return ipaddress.ip_network(address)


@dataclass(frozen=True, slots=True)
class IpAllowlist:
    """A parsed set of allowed webhook source networks; empty allows nothing."""

    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, spec: str) -> IpAllowlist:
        """Parse a comma-separated list of IPs, CIDR ranges and IPv4 wildcards."""
        # Blank items are skipped so a trailing comma in an env var is not a boot failure.
        entries = [item.strip() for item in spec.split(",")]
        return cls(networks=tuple(_parse_entry(entry) for entry in entries if entry))

    @property
    def is_empty(self) -> bool:
        """True when no network is listed (so every address is refused)."""
        return not self.networks

    def allows(self, ip: str) -> bool:
        """Return True when ``ip`` parses and falls inside one of the listed networks."""
        address = _parse_address(ip)
        if address is None:
            return False
        candidates: list[IPAddress] = [address]
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            # Dual-stack sockets report IPv4 peers as ::ffff:a.b.c.d; they must meet the IPv4 rules.
            candidates.append(address.ipv4_mapped)
        # `in` is False (not an error) across IP versions, so no version check is needed.
        return any(candidate in network for candidate in candidates for network in self.networks)


def client_ip(
    *,
    remote_addr: str | None,
    x_forwarded_for: str | None,
    x_real_ip: str | None,
    trusted_proxy_count: int,
) -> str | None:
    """Return the client's IP as seen by the outermost trusted proxy (or the socket peer)."""
    if trusted_proxy_count < 0:
        raise ValueError("trusted_proxy_count must not be negative")

    def normalised(value: str | None) -> str | None:
        address = _parse_address(value)
        return None if address is None else str(address)

    if trusted_proxy_count == 0:
        # Nobody in front of us is trusted, so every forwarding header is client-controlled.
        return normalised(remote_addr)

    # Each trusted proxy appends the peer it saw, so the N-th entry from the right is the one
    # written by the outermost trusted proxy; everything left of it is client-supplied.
    hops = [hop.strip() for hop in (x_forwarded_for or "").split(",")]
    hops = [hop for hop in hops if hop]
    if len(hops) >= trusted_proxy_count:
        # No fallback when it is garbage: that hop was written by our own proxy, so something
        # is misconfigured, and the spoofable headers must not win.
        return normalised(hops[-trusted_proxy_count])
    return normalised(x_real_ip) or normalised(remote_addr)


FORWARDING_HEADERS = ("HTTP_X_FORWARDED_FOR", "HTTP_X_FORWARDED_PROTO", "HTTP_X_FORWARDED_HOST",
                      "HTTP_X_FORWARDED_PORT", "HTTP_X_FORWARDED_PREFIX", "HTTP_X_REAL_IP", "HTTP_FORWARDED")


class TrustedProxyClientAddress:
    """WSGI middleware: set REMOTE_ADDR to the client as seen by our outermost trusted proxy
    (X-Forwarded-For N hops from the right, else X-Real-IP); client-written entries left of that
    hop are ignored.

    With `proxies` (TRUSTED_PROXY_CIDRS) a peer outside those networks reached the app without
    passing through our proxy, so every forwarding header it sent is its own invention: they are
    dropped before anything reads them (client address, scheme, host).
    """

    def __init__(self, wsgi_app, trusted_proxy_count: int, *, proxies: IpAllowlist | None = None):
        self.wsgi_app = wsgi_app
        self.trusted_proxy_count = trusted_proxy_count
        self.proxies = proxies if proxies is not None and not proxies.is_empty else None

    def __call__(self, environ, start_response):
        if self.proxies is not None and not self.proxies.allows(environ.get("REMOTE_ADDR") or ""):
            for name in FORWARDING_HEADERS:
                environ.pop(name, None)
        resolved = client_ip(remote_addr=environ.get("REMOTE_ADDR"),
                             x_forwarded_for=environ.get("HTTP_X_FORWARDED_FOR"),
                             x_real_ip=environ.get("HTTP_X_REAL_IP"),
                             trusted_proxy_count=self.trusted_proxy_count)
        if resolved:  # a garbage trusted hop keeps the proxy's own address: never a spoofable one
            environ["REMOTE_ADDR"] = resolved
        return self.wsgi_app(environ, start_response)
