"""Uploads to the Hugging Face Hub, shared by `export.py` (checkpoints) and `prepare_data.py` (datasets).

The repo id is checked before anything is written, and what commonly goes wrong (offline, no token, no right to the
repo, no network) ends in one line, `HubError`, that the commands print instead of a traceback.
"""

from contextlib import contextmanager

from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalTokenNotFoundError, OfflineModeIsEnabled
from huggingface_hub.utils import validate_repo_id

try:
    import httpx2 as http_client  # what huggingface_hub >= 2 talks through
except ImportError:
    import httpx as http_client


class HubError(RuntimeError):
    """A Hub operation failed for a reason the user can fix; the message is one line."""


def check_repo_id(repo_id: str) -> str:
    """`repo_id` if it is a valid `owner/name` Hub repo id, else a `ValueError` saying why."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(f"invalid Hub repo id {repo_id!r}: {str(error).splitlines()[0]}") from None
    if repo_id.count("/") != 1:
        raise ValueError(f"invalid Hub repo id {repo_id!r}: expected OWNER/NAME, e.g. my-org/qbert4rec-beauty")
    return repo_id


@contextmanager
def hub_errors(action: str):
    """Turn the Hub's offline, authentication, permission and network errors inside the block into a `HubError`
    that starts with `action` (e.g. "pushing outputs/final to org/name")."""
    try:
        yield
    except OfflineModeIsEnabled:
        raise HubError(f"{action} failed: offline mode is on (HF_HUB_OFFLINE=1); unset it to upload") from None
    except LocalTokenNotFoundError:
        raise HubError(f"{action} failed: no Hub token (run `hf auth login`, set $HF_TOKEN or pass --token)") from None
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else None
        reason = {401: "the token is invalid or missing", 403: "the token may not write to this repo",
                  404: "the repo or revision does not exist"}.get(status, str(error).splitlines()[0])
        raise HubError(f"{action} failed: {reason} (HTTP {status})") from None
    except (ConnectionError, TimeoutError, http_client.TransportError) as error:
        raise HubError(f"{action} failed: cannot reach the Hub ({type(error).__name__})") from None
