"""Which `Host` headers the server answers (DNS-rebinding protection): a page on another site whose name
the attacker re-points at 127.0.0.1 reaches a loopback server from the victim's browser, but its requests
still carry the attacker's name in `Host`, so answering only the names the server is known by stops it."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ..errors import MixError
from .errors import ApiError

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARD_BINDS = ("0.0.0.0", "::", "")
ANY = "*"


@dataclass(frozen=True)
class HostPolicy:
    """The names a server bound to ``port`` answers to: ``own`` with that port only (the bound address and,
    on a loopback or wildcard bind, the loopback names), ``extra`` (--allow-host NAME: any port; NAME:PORT:
    that port). ``check`` False accepts every Host."""

    port: int
    own: frozenset[str] = frozenset()
    extra: frozenset[tuple[str, int | None]] = frozenset()
    check: bool = True
    unasked_wildcard: bool = False  # bound to every interface without --allow-host: warned at start-up

    def allows(self, header: str | None) -> bool:
        if not self.check:
            return True
        parsed = split_host(header) if header else None
        if parsed is None:
            return False
        name, port = parsed
        if name in self.own and (port or 80) == self.port:
            return True
        return (name, None) in self.extra or (name, port) in self.extra


def host_policy(bound_host: str, port: int, allow_hosts: tuple[str, ...] | list[str] = ()) -> HostPolicy:
    """The policy of a server listening on ``bound_host``:``port`` started with ``--allow-host`` ``allow_hosts``."""
    if ANY in allow_hosts:
        return HostPolicy(port, check=False)
    extra = frozenset(_allowed_entry(entry) for entry in allow_hosts)
    wildcard = bound_host in WILDCARD_BINDS
    if wildcard and not extra:
        return HostPolicy(port, check=False, unasked_wildcard=True)
    own = {_bare(bound_host)} if not wildcard else set()
    if wildcard or _is_loopback(bound_host):
        own.update(LOOPBACK_NAMES)
    return HostPolicy(port, frozenset(own), extra)


def named_host(host: str) -> tuple[str, ...]:
    """``--host`` when it is a name rather than an address (its socket shows only the address), as an
    allowed Host entry; () for an address."""
    try:
        ipaddress.ip_address(_bare(host))
    except ValueError:
        return (host.lower(),) if host not in WILDCARD_BINDS and split_host(host) else ()
    return ()


def split_host(header: str) -> tuple[str, int | None] | None:
    """``Host`` as (lower-case name, port or None); None when it is not a host[:port] at all."""
    header = header.strip().lower()
    if header.startswith("["):  # [v6]:port
        name, _, rest = header[1:].partition("]")
        if rest and not rest.startswith(":"):
            return None
        port = rest[1:] if rest else None
    elif header.count(":") == 1:
        name, _, port = header.partition(":")
    elif ":" in header:
        return None  # a bare IPv6 address without brackets is not a valid Host
    else:
        name, port = header, None
    if not name or (port is not None and not port.isdigit()):
        return None
    return name, int(port) if port is not None else None


def refusal(header: str | None) -> ApiError:
    """The 421 a request with an unknown Host gets, naming the flag that would let it in."""
    parsed = split_host(header) if header else None
    shown = repr(header) if header else "a request without a Host header"
    name = parsed[0] if parsed else "NAME"
    message = (f"the server does not answer to Host {shown} (DNS-rebinding protection); start it with "
               f"--allow-host {name} to accept that name, or --allow-host '*' to accept any")  # fmt: skip
    return ApiError(421, message, "invalid_request_error")


def _allowed_entry(entry: str) -> tuple[str, int | None]:
    parsed = split_host(entry)
    if parsed is None:
        raise MixError(f"--allow-host {entry!r} is not a host name or host:port", "pass e.g. --allow-host myhost.lan")
    return parsed


def _bare(host: str) -> str:
    return host.strip("[]").lower()


def _is_loopback(host: str) -> bool:
    if _bare(host) == "localhost":
        return True
    try:
        return ipaddress.ip_address(_bare(host)).is_loopback
    except ValueError:
        return False
