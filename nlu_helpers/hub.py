"""Reaching the Hugging Face hub, or failing in seconds with the ways to work offline.

Colab users load hub models as usual; on a machine without the hub a hub id fails at once
(one probe, no retries) naming the model and the offline choices, instead of ~50 s of
download retries and an error that names neither.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

HUB_PROBE_SECONDS = 5.0  # a reachable hub answers a HEAD in well under a second
_probes: dict[str, tuple[float, str | None]] = {}  # endpoint -> (when, why unreachable or None)


class HubUnreachable(OSError):
    """A hub model is asked for, the hub can't be reached (or offline mode is on) and the model
    is not in the local cache. Raised at once, instead of after ~50 s of download retries."""


def _hub_problem(endpoint: str) -> str | None:
    """Why ``endpoint`` can't be reached (one HEAD, no retries), or None when it answers.

    Any HTTP answer, even an error status, means reachable. The result is kept for a
    minute, so loading a tokenizer and then its model probes once.
    """
    import time

    from huggingface_hub import get_session

    now = time.monotonic()
    if endpoint in _probes and now - _probes[endpoint][0] < 60:
        return _probes[endpoint][1]
    try:
        get_session().head(endpoint, timeout=HUB_PROBE_SECONDS)
        problem = None
    except Exception as error:  # noqa: BLE001 - the session's error classes depend on the hub's HTTP library
        problem = f"{type(error).__name__}: {error}".strip()
    _probes[endpoint] = (now, problem)
    return problem


def hub_options(source: str, alternatives: tuple[str, ...] = ("embedded", "tiny-random")) -> dict[str, Any]:
    """``from_pretrained`` options for ``source`` (what :func:`resolve_model` returned).

    A folder, or a hub id while the hub answers: none. Hub unreachable but the model in the
    local Hugging Face cache: ``local_files_only=True`` (loads in seconds, with a note). Not
    cached, and the hub unreachable or ``HF_HUB_OFFLINE=1``: :class:`HubUnreachable` naming the
    model and the ways to work offline, rather than ~50 s of retries and an error that names
    neither. ``alternatives``: the names that need no hub, offered in that error.
    """
    if Path(source).is_dir():
        return {}
    from huggingface_hub import constants, is_offline_mode, try_to_load_from_cache

    cached = isinstance(try_to_load_from_cache(source, "config.json"), str)
    offline_ways = (
        f"to work offline use {', '.join(map(repr, alternatives))} (no hub needed) or a local model folder; "
        f"or download {source!r} once where the hub is reachable and then set HF_HUB_OFFLINE=1"
    )
    if is_offline_mode():
        if cached:
            return {}
        raise HubUnreachable(
            f"model {source!r} is a hub id, HF_HUB_OFFLINE=1 forbids downloading and it is not in the "
            f"local Hugging Face cache ({constants.HF_HUB_CACHE}); {offline_ways}"
        )
    problem = _hub_problem(constants.ENDPOINT)
    if problem is None:
        return {}
    if cached:
        print(f"The Hugging Face hub ({constants.ENDPOINT}) is unreachable; loading {source!r} from the local cache.",
              flush=True)
        return {"local_files_only": True}
    raise HubUnreachable(
        f"model {source!r} is a hub id, the Hugging Face hub ({constants.ENDPOINT}) can't be reached "
        f"({problem}) and the model is not in the local cache; {offline_ways}"
    )
