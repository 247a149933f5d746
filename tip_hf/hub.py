"""Hub access that fails fast: detect "no network" once instead of retrying for a minute.

``datasets`` and ``transformers`` retry unreachable Hub requests with back-off before they
report that a file is not cached (29-52 s measured offline). When ``HF_HUB_OFFLINE`` is not
set, :func:`offline_unless_reachable` tries one TCP connection to the Hub (2 s); if that
fails it turns offline mode on for this process, so cached datasets and models still load
and anything else gives its "not cached" error at once.
"""

from __future__ import annotations

import functools
import os
import socket
import sys
from urllib.parse import urlparse

__all__ = ["hub_offline", "offline_unless_reachable"]

_TRUE = ("1", "true", "yes", "on")


def hub_offline() -> bool:
    """Whether offline mode is on (set by the user or by :func:`offline_unless_reachable`)."""
    return any(os.environ.get(name, "").strip().lower() in _TRUE for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


@functools.cache
def offline_unless_reachable(timeout: float = 2.0) -> bool:
    """Turn on offline mode if the Hub cannot be reached; returns whether it is offline."""
    if hub_offline():
        return True
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return False  # the Hub is reached through a proxy: a direct probe says nothing
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return False
    except OSError:
        pass
    os.environ["HF_HUB_OFFLINE"] = "1"
    # modules that read the variable at import time
    if "huggingface_hub" in sys.modules:
        import huggingface_hub.constants

        huggingface_hub.constants.HF_HUB_OFFLINE = True
    if "datasets" in sys.modules:
        import datasets.config

        datasets.config.HF_HUB_OFFLINE = True
    return True
