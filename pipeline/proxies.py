"""Which forward proxy a request takes, read from the environment once and the same way everywhere we speak HTTP
ourselves (model calls and their preflight, `actcurate models pull`)."""

from __future__ import annotations

import base64
import ipaddress
import urllib.request
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit


class UnsupportedProxy(ValueError):
    """The environment names a proxy of a kind we cannot speak to."""


@dataclass(frozen=True)
class Proxy:
    """An http:// forward proxy. `url` and `authorization` carry its credentials: only `name` goes into messages."""

    host: str
    port: int
    url: str = field(repr=False)
    authorization: str | None = field(default=None, repr=False)  # a Proxy-Authorization header value

    @property
    def name(self) -> str:
        return authority(self.host, self.port)


def proxy_for(scheme: str, host: str, port: int, environ: dict[str, str] | None = None) -> Proxy | None:
    """The proxy for a request to scheme://host:port, as curl and httpx read the environment: HTTPS_PROXY or
    HTTP_PROXY by the request's scheme, else ALL_PROXY (lower-case names win); none where NO_PROXY matches the host
    ("*", a host or domain suffix, optionally with :port, or an IP range such as 10.0.0.0/8). The model calls, their
    preflight and `actcurate models pull` all route by it."""
    proxies = urllib.request.getproxies_environment() if environ is None else environ
    url = proxies.get(scheme) or proxies.get("all")
    if not url or _bypassed(host, port, proxies.get("no", "")):
        return None
    url = url if "://" in url else f"http://{url}"
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise UnsupportedProxy(f"proxy {parts.scheme}://{parts.hostname or ''} for {scheme} requests is not "
                               "supported: actcurate speaks to http:// proxies only (NO_PROXY can exempt this host)")
    authorization = None
    if parts.username is not None:
        token = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        authorization = "Basic " + base64.b64encode(token).decode()
    return Proxy(parts.hostname, parts.port or 80, url, authorization)


def origin_of(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a URL, the port defaulted by the scheme."""
    parts = urlsplit(url)
    return parts.scheme, parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


def _bypassed(host: str, port: int, no_proxy: str) -> bool:
    host = host.lower().strip("[]")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for entry in (e.strip().lower() for e in no_proxy.split(",")):
        if not entry:
            continue
        if entry == "*":
            return True
        if address is not None and "/" in entry:
            try:
                if address in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                pass
            continue
        name, _, entry_port = entry.rpartition(":") if entry.count(":") == 1 else (entry, "", "")
        if entry_port and entry_port != str(port):
            continue
        name = name.strip("[]").lstrip(".")
        if host == name or host.endswith("." + name):
            return True
    return False


def authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
