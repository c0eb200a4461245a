"""Fail fast, with a useful message, when a profile needs the Hugging Face hub and it is out of reach."""
from __future__ import annotations

import os
import socket
from pathlib import Path

__all__ = ["HubUnavailableError", "require_hub"]

HUB_HOST = "huggingface.co"


class HubUnavailableError(RuntimeError):
    """The hub cannot be reached and the asset is not a local path."""


def _reachable(host: str, timeout: float) -> bool:
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def require_hub(name_or_path: str, *, what: str, timeout: float = 3.0) -> None:
    """Return if ``name_or_path`` is a local path or the hub answers; raise ``HubUnavailableError`` otherwise.

    With ``HF_HUB_OFFLINE=1`` set, the user asked for the local Hugging Face cache, so nothing is checked.
    """
    if Path(name_or_path).exists() or os.environ.get("HF_HUB_OFFLINE") == "1":
        return
    if not _reachable(HUB_HOST, timeout):
        raise HubUnavailableError(
            f"{what} must be downloaded from the Hugging Face hub ({HUB_HOST}), which this machine cannot reach "
            f"(no answer within {timeout:.0f} s). The 'gpt2' profile needs internet (and ideally a GPU). "
            f"Offline, use PROFILE='embedded' (the default) or PROFILE='smoke'. If the files are already in your "
            f"Hugging Face cache, set HF_HUB_OFFLINE=1."
        )
