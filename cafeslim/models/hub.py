"""The network around pretrained weights: a fast reachability probe, offline mode, timeouts.

Download clients retry with backoff or block on an unanswered connect; these helpers tell a
missing network apart up front and turn any download failure into one
:class:`~cafeslim.errors.WeightsError`.
"""

from __future__ import annotations

import socket
import threading
import urllib.request
from contextlib import contextmanager
from typing import Dict, Iterator, Optional
from urllib.parse import urlparse

from ..errors import WeightsError

_PROBE_TIMEOUT_S = 3.0
_DOWNLOAD_SOCKET_TIMEOUT_S = 60.0  # per blocking socket call, not per download


def hf_endpoint() -> str:
    try:
        from huggingface_hub import constants

        return constants.ENDPOINT
    except (ImportError, AttributeError):
        return "https://huggingface.co"


def probe(url: str, timeout: float = _PROBE_TIMEOUT_S) -> Optional[str]:
    """Return None if a TCP connection to the url's host (or its proxy) opens in time, else why not.

    Download clients retry with backoff (huggingface_hub for about a minute) or block on an
    unanswered connect; one short probe tells them apart from a working network up front.
    """
    parsed = urlparse(url)
    host, port = parsed.hostname or "", parsed.port or (443 if parsed.scheme == "https" else 80)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parsed.scheme) or proxies.get("all")
    if proxy and not urllib.request.proxy_bypass(host):
        proxied = urlparse(proxy if "://" in proxy else f"http://{proxy}")
        host, port = proxied.hostname or host, proxied.port or 8080
    result: Dict[str, str] = {}

    def attempt() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result["ok"] = ""
        except OSError as exc:
            result["error"] = f"{host}:{port} unreachable ({exc})"

    # getaddrinfo ignores socket timeouts, so the whole attempt runs in a thread we stop
    # waiting for.
    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    if "ok" in result:
        return None
    return result.get("error", f"{host}:{port} did not answer within {timeout:.0f} s")


def require_reachable(what: str, url: str) -> None:
    why = probe(url)
    if why is not None:
        raise WeightsError(f"could not download pretrained weights for {what} (offline?): {why}")


@contextmanager
def hf_offline(enabled: bool) -> Iterator[None]:
    if not enabled:
        yield
        return
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


@contextmanager
def download_errors(what: str, why: Optional[str] = None) -> Iterator[None]:
    """Bound blocking socket calls and turn download failures into one WeightsError."""
    saved = socket.getdefaulttimeout()
    socket.setdefaulttimeout(_DOWNLOAD_SOCKET_TIMEOUT_S)
    try:
        yield
    except (OSError, RuntimeError, EOFError) as exc:
        # OSError covers urllib and huggingface_hub network errors; RuntimeError a hash
        # mismatch or a truncated download that torch.load cannot read.
        reason = why or " ".join(str(exc).split())[:300] or type(exc).__name__
        raise WeightsError(f"could not download pretrained weights for {what} (offline?): "
                           f"{reason}") from None
    finally:
        socket.setdefaulttimeout(saved)


__all__ = ["download_errors", "hf_endpoint", "hf_offline", "probe", "require_reachable"]
