"""Whether the Hugging Face hub can be used: switched off by the user, or unreachable from this machine. Asked
before opening hub data (training sources, evaluation tasks), so that a machine without network access gets an
error naming the source and the offline alternative in seconds, not after the hub client's retries (about 50 s
per request)."""

from __future__ import annotations

import os
import socket


def hub_offline() -> bool:
    """Whether the user turned the hub off (``HF_HUB_OFFLINE`` or ``HF_DATASETS_OFFLINE``)."""
    return any(os.environ.get(v, "0") not in ("0", "", "false") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def hub_unreachable() -> bool:
    """Whether hub data is wanted (the hub is not switched off) but no connection to it opens: the case to refuse
    at once, naming the offline alternative. In offline mode the hub client answers from its cache, fast."""
    return not hub_offline() and not hub_reachable()


def hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the hub opens within ``timeout`` seconds."""
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False
