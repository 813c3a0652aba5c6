"""Outbound webhook HTTP (no nats, no fastapi): URL checks, the address guard, one POST.

A webhook URL is given by a tenant, so the notifier must not become a way into the
network it runs in (SSRF): the host is resolved and every address must be public, and the
request then goes to the address that was checked (the Host header and TLS SNI keep the
name), so a DNS answer that changes between the check and the connect (rebinding) cannot
redirect it. Redirects are not followed. `allow_private` (VIDMESH_WEBHOOK_ALLOW_PRIVATE=1)
lifts the guard for development and tests.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import httpx

MAX_URL_LENGTH = 2048
USER_AGENT = "vidmesh-webhooks/1"


class InvalidUrl(ValueError):
    """Not an http(s) URL a webhook can use."""


class Refused(Exception):
    """The host resolves to an address webhooks may not reach."""


class Unresolvable(Exception):
    """The host does not resolve (now): retryable at delivery time."""


@dataclass(frozen=True)
class Target:
    url: str  # the checked URL with the host replaced by the address to connect to
    host_header: str
    sni: str | None  # https: the name TLS must verify


def check_url(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a usable webhook URL, or InvalidUrl."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL_LENGTH:
        raise InvalidUrl(f"the url must be 1..{MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidUrl(f"not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise InvalidUrl("the url must start with http:// or https://")
    if not parts.hostname:
        raise InvalidUrl("the url has no host")
    if parts.username or parts.password:
        raise InvalidUrl("credentials in the url are not allowed (use the signature to authenticate)")
    if parts.fragment:
        raise InvalidUrl("the url must not have a #fragment")
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80)


def forbidden(address: str) -> str | None:
    """Why an address may not receive webhooks, or None when it is public."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for attribute, what in (
        ("is_loopback", "a loopback"),
        ("is_link_local", "a link-local"),
        ("is_private", "a private"),
        ("is_multicast", "a multicast"),
        ("is_unspecified", "an unspecified"),
        ("is_reserved", "a reserved"),
    ):
        if getattr(ip, attribute):
            return f"{ip} is {what} address"
    if not ip.is_global:  # shared address space (100.64/10), documentation ranges, ...
        return f"{ip} is not a public address"
    return None


async def resolve(url: str, *, allow_private: bool) -> Target:
    """Check the URL and its addresses; the Target to send to. InvalidUrl, Refused, Unresolvable."""
    scheme, host, port = check_url(url)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise Unresolvable(f"cannot resolve {host}: {exc.strerror or exc}") from None
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    if not addresses:
        raise Unresolvable(f"{host} has no address")
    if not allow_private:
        for address in addresses:
            reason = forbidden(address)
            if reason:
                raise Refused(f"{host} resolves to {reason}; webhooks only go to public addresses")
    address = addresses[0]
    parts = urlsplit(url)
    literal = f"[{address}]" if ":" in address else address
    default_port = 443 if scheme == "https" else 80
    netloc = literal if port == default_port else f"{literal}:{port}"
    host_header = parts.netloc.rsplit("@", 1)[-1]
    return Target(
        url=urlunsplit((scheme, netloc, parts.path or "/", parts.query, "")),
        host_header=host_header,
        sni=host if scheme == "https" else None,
    )


@dataclass(frozen=True)
class Outcome:
    ok: bool
    status_code: int | None
    error: str | None
    duration_ms: float


async def post(target: Target, body: bytes, headers: dict[str, str], *, timeout_s: float) -> Outcome:
    """One POST; 2xx is success, anything else (including a redirect) is a failure."""
    started = time.perf_counter()
    extensions = {"sni_hostname": target.sni} if target.sni else {}
    all_headers = {
        **headers,
        "Host": target.host_header,
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
    }
    try:
        # trust_env=False: an HTTP(S)_PROXY from the environment would bypass the address check.
        async with httpx.AsyncClient(timeout=timeout_s, follow_redirects=False, trust_env=False) as client:
            request = client.build_request("POST", target.url, content=body, headers=all_headers, extensions=extensions)
            response = await client.send(request, stream=True)
            await response.aclose()  # the receiver's body is not needed
    except httpx.TimeoutException:
        return Outcome(False, None, f"timed out after {timeout_s:g}s", _ms(started))
    except httpx.HTTPError as exc:
        return Outcome(False, None, f"{type(exc).__name__}: {exc}"[:300], _ms(started))
    ok = 200 <= response.status_code < 300
    error = None if ok else f"HTTP {response.status_code}"
    return Outcome(ok, response.status_code, error, _ms(started))


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)
