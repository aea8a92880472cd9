"""The image of a request: a base64 `data:` URL always; an http(s) URL only when the server allows it.

A fetched URL has a size limit and one overall deadline (load_image's budget), and each address it resolves to,
redirect targets included, must be a public one unless private addresses are allowed: a server that fetches
what its clients name must not become their way into its own network (loopback, private, link-local such as
cloud metadata at 169.254.169.254). Fragile: the name is resolved again when it is fetched, so a DNS answer that
changes in between (rebinding) is not caught.
"""
from __future__ import annotations

import base64
import binascii
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from .protocol import ApiError

DATA_URL_PREFIX = "data:"
WEB_SCHEMES = ("http://", "https://")
PER_READ_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class ImagePolicy:
    max_bytes: int = 20 * 1024 * 1024       # of the image file (decoded from base64, or downloaded)
    allow_urls: bool = False                # fetch http(s) URLs at all
    allow_private_urls: bool = False        # ... also at loopback / private / link-local addresses
    deadline_seconds: float = 20.0          # for a whole download


def load_request_image(url: str, policy: ImagePolicy):
    """The PIL image an image_url part names; ApiError (4xx) for anything this server will not or cannot read."""
    from cogvlm.utils.preprocessing.image_processor import ImageLoadError

    try:
        if url.startswith(DATA_URL_PREFIX):
            return _from_data_url(url, policy.max_bytes)
        if url.lower().startswith(WEB_SCHEMES):
            return _from_web(url, policy)
    except ImageLoadError as problem:
        raise ApiError(400, f"image_url: {problem}", "image_url", "invalid_image") from None
    raise ApiError(400, "image_url must be a base64 data: URL (data:image/png;base64,...) or an http(s) URL",
                   "image_url", "invalid_image_url")


def _from_data_url(url: str, max_bytes: int):
    from cogvlm.utils.preprocessing.image_processor import decode_image

    header, comma, payload = url.partition(",")
    if not comma or not header.endswith(";base64"):
        raise ApiError(400, "image_url: a data: URL must be base64-encoded (data:image/png;base64,...)",
                       "image_url", "invalid_image_url")
    if len(payload) // 4 * 3 > max_bytes:           # checked before decoding: base64 holds 3 bytes per 4 characters
        raise _too_large(len(payload) // 4 * 3, max_bytes)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "image_url: the data: URL's base64 payload does not decode", "image_url",
                       "invalid_image") from None
    return decode_image(data, "the data: URL image")


def _too_large(size: int, max_bytes: int) -> ApiError:
    return ApiError(413, f"image_url: the image is about {size} bytes, more than the {max_bytes} this server "
                         f"accepts", "image_url", "image_too_large")


def _from_web(url: str, policy: ImagePolicy):
    from cogvlm.utils.preprocessing.image_processor import load_image

    if not policy.allow_urls:
        raise ApiError(400, "image_url: this server does not fetch http(s) URLs (start it with --allow_image_urls);"
                            " send the image inline as a base64 data: URL", "image_url", "image_url_not_allowed")
    check = None if policy.allow_private_urls else check_public_address
    return load_image(url, timeout=min(PER_READ_TIMEOUT_SECONDS, policy.deadline_seconds),
                      budget=policy.deadline_seconds, max_bytes=policy.max_bytes, check_url=check)


def check_public_address(url: str) -> None:
    """ImageLoadError unless every address the URL's host resolves to is a public (globally routable) one."""
    from cogvlm.utils.preprocessing.image_processor import ImageLoadError

    parts = urlsplit(url)
    if not parts.hostname:
        raise ImageLoadError(f"refused image URL {url}: it names no host")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        addresses = {info[4][0] for info in socket.getaddrinfo(parts.hostname, port, proto=socket.IPPROTO_TCP)}
    except (socket.gaierror, UnicodeError, ValueError) as problem:
        raise ImageLoadError(f"could not download image {url}: cannot resolve {parts.hostname} ({problem})") from None
    for address in sorted(addresses):
        if not ipaddress.ip_address(address.split("%")[0]).is_global:
            raise ImageLoadError(f"refused image URL {url}: {parts.hostname} is {address}, a loopback, private or "
                                 f"link-local address (start the server with --allow_private_image_urls to allow it)")
