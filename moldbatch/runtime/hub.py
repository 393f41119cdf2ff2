"""Hugging Face Hub access with failures turned into one-line `RuntimeLoadError`s that say what to do."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from moldbatch.runtime.errors import RuntimeLoadError


def _hint(repo: str) -> str:
    return (
        f"pre-download it on a connected machine with `hf download {repo}` (then HF_HUB_OFFLINE=1 works), "
        "or check the network"
    )


@contextlib.contextmanager
def hub_errors(repo: str, what: str) -> Iterator[None]:
    """Translate Hub/network failures while fetching `what` from `repo` into RuntimeLoadError."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    try:
        yield
    except GatedRepoError as exc:
        raise RuntimeLoadError(
            f"{repo} is gated: accept its licence at https://huggingface.co/{repo} with your account, then set "
            "HF_TOKEN (or run `hf auth login`) and retry"
        ) from exc
    except RepositoryNotFoundError as exc:
        raise RuntimeLoadError(
            f"{repo} was not found or needs authorisation for {what}: check the name, set HF_TOKEN if it is private"
        ) from exc
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as exc:
        raise RuntimeLoadError(
            f"cannot reach the Hugging Face Hub and {what} is not cached; {_hint(repo)}"
        ) from exc
    except HfHubHTTPError as exc:
        raise RuntimeLoadError(
            f"the Hub refused {what} from {repo} ({exc}); {_hint(repo)}"
        ) from exc
    except (ConnectionError, TimeoutError) as exc:
        raise RuntimeLoadError(
            f"network error while fetching {what} from {repo}; {_hint(repo)}"
        ) from exc
    except OSError as exc:
        # transformers/diffusers wrap Hub failures in OSError with their own message.
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "gated" in message.lower() or "401" in message or "403" in message:
            raise RuntimeLoadError(
                f"{repo} is gated: accept its licence at https://huggingface.co/{repo}, then set HF_TOKEN and retry"
            ) from exc
        raise RuntimeLoadError(
            f"could not load {what} from {repo}: {message}; {_hint(repo)}"
        ) from exc


def download(repo: str, filename: str) -> str:
    """Local path of `filename` in `repo`, downloading it into the Hub cache if needed."""
    from huggingface_hub import hf_hub_download

    with hub_errors(repo, filename):
        return hf_hub_download(repo_id=repo, filename=filename)


def preflight(repos: list[str]) -> None:
    """Fail fast, before any large download, when a repo is gated, missing or the Hub unreachable.

    Skipped in offline mode (HF_HUB_OFFLINE=1), where everything must come from the local cache.
    """
    from huggingface_hub import auth_check, constants
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    if constants.HF_HUB_OFFLINE:
        return
    for repo in repos:
        try:
            auth_check(repo)
        except (GatedRepoError, RepositoryNotFoundError):
            with hub_errors(repo, "access check"):
                raise
        except HfHubHTTPError as exc:
            raise RuntimeLoadError(
                f"the Hub refused access to {repo} ({exc}); set HF_TOKEN if it needs one"
            ) from exc
        except (
            Exception
        ) as exc:  # network failures come from the HTTP client (httpx), not as OSError
            raise RuntimeLoadError(
                f"cannot reach the Hugging Face Hub to check {repo} ({exc}); if the models are already downloaded "
                f"set HF_HUB_OFFLINE=1, otherwise pre-download them on a connected machine (`hf download {repo}`)"
            ) from exc
