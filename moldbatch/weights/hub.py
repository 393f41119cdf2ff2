"""Hub and loader failures turned into one-line `RuntimeLoadError`s that say what to do.

Nothing here downloads: `moldbatch pull` (pull.py) does, and rendering reads local files only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from moldbatch.errors import RuntimeLoadError


def _hint(repo: str) -> str:
    return f"fetch the model's files with `moldbatch pull MODEL` ({repo} is one of them)"


def gated_message(repo: str) -> str:
    """What to do about a gated repo (Gemma 3 is one), for loading and pulling alike."""
    return (
        f"{repo} is gated: accept its licence at https://huggingface.co/{repo} with your "
        "Hugging Face account, then log in with `hf auth login` (or set HF_TOKEN) and run "
        "the same command again"
    )


def failure(exc: BaseException) -> str | None:
    """What kind of Hub failure `exc` is, for loading and pulling alike: "gated", "missing"
    (no such repo, or a private one), "offline" (not reachable, not cached), "refused" (an
    HTTP error), "network", or None when it is none of these."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, GatedRepoError):
        return "gated"
    if isinstance(exc, RepositoryNotFoundError):
        return "gated" if status in (401, 403) else "missing"
    if isinstance(exc, LocalEntryNotFoundError | OfflineModeIsEnabled):
        return "offline"
    if isinstance(exc, HfHubHTTPError):
        return "gated" if status in (401, 403) else "refused"
    if isinstance(exc, ConnectionError | TimeoutError):
        return "network"
    return None


@contextlib.contextmanager
def hub_errors(repo: str, what: str) -> Iterator[None]:
    """Translate Hub/network failures while fetching `what` from `repo` into RuntimeLoadError."""
    try:
        yield
    except Exception as exc:
        kind = failure(exc)
        if kind == "gated":
            raise RuntimeLoadError(gated_message(repo)) from exc
        if kind == "missing":
            raise RuntimeLoadError(
                f"{repo} was not found or needs authorisation for {what}: check the name, "
                "set HF_TOKEN if it is private"
            ) from exc
        if kind == "offline":
            raise RuntimeLoadError(
                f"cannot reach the Hugging Face Hub and {what} is not cached; {_hint(repo)}"
            ) from exc
        if kind == "refused":
            raise RuntimeLoadError(
                f"the Hub refused {what} from {repo} ({exc}); {_hint(repo)}"
            ) from exc
        if kind == "network":
            raise RuntimeLoadError(
                f"network error while fetching {what} from {repo}; {_hint(repo)}"
            ) from exc
        if not isinstance(exc, OSError):
            raise
        # transformers/diffusers wrap Hub failures in OSError with their own message.
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "gated" in message.lower() or "401" in message or "403" in message:
            raise RuntimeLoadError(gated_message(repo)) from exc
        raise RuntimeLoadError(
            f"could not load {what} from {repo}: {message}; {_hint(repo)}"
        ) from exc
