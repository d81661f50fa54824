"""The one error hierarchy: every refusal vvolguard makes, with its HTTP status and contract code."""
from __future__ import annotations


class VvgError(Exception):
    """Base of every expected error; ``message`` is safe to show to the caller."""

    status_code = 500
    code = "internal_error"

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.__doc__ or self.code)
        self.message = message or (self.__doc__ or self.code)

    def body(self) -> dict:
        """The contract's error body."""
        return {"error": {"code": self.code, "message": self.message}}


class InvalidInput(VvgError):
    """The input is malformed."""

    status_code = 400
    code = "invalid_input"


class InvalidJson(InvalidInput):
    """The body is not JSON."""

    code = "invalid_json"


class InvalidEvent(InvalidInput):
    """The event is not an object, or a field is missing, unknown or malformed."""

    code = "invalid_event"


class PolicyValidationError(InvalidInput):
    """A policy file or form failed validation; ``errors`` lists one message per problem."""

    code = "invalid_policy"

    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors)
        first = self.errors[0] if self.errors else "invalid policy"
        more = f" (and {len(self.errors) - 1} more)" if len(self.errors) > 1 else ""
        super().__init__(first + more)


class AuthError(VvgError):
    """Authentication failed."""

    status_code = 401
    code = "unauthorized"


class MissingSignature(AuthError):
    """A signature header is missing."""

    code = "missing_signature"


class BadSignature(AuthError):
    """The signature is malformed or wrong."""

    code = "bad_signature"


class StaleSignature(AuthError):
    """The signature's timestamp is out of tolerance."""

    code = "stale_signature"


class UnknownHost(AuthError):
    """The host is not enrolled, or is revoked."""

    code = "unknown_host"


class Forbidden(VvgError):
    """The caller may not do this."""

    status_code = 403
    code = "forbidden"


class NotFound(VvgError):
    """The thing named does not exist."""

    status_code = 404
    code = "not_found"


class Conflict(VvgError):
    """The change conflicts with the stored state."""

    status_code = 409
    code = "conflict"


class AlreadyExists(Conflict):
    """The thing already exists."""

    code = "already_exists"


class ConcurrentModification(Conflict):
    """Someone else changed the item since it was read."""

    code = "concurrent_modification"


class EventConflict(Conflict):
    """The event_id was used with another body."""

    code = "event_conflict"


class EventInProgress(Conflict):
    """The event_id is being processed right now."""

    code = "event_in_progress"


class PayloadTooLarge(VvgError):
    """The body is over the limit."""

    status_code = 413
    code = "payload_too_large"


class SettingsError(VvgError):
    """A setting in the environment is malformed or out of range; nothing starts with it."""

    status_code = 500
    code = "configuration_error"


class KeyVolumeError(InvalidInput):
    """A key volume image or its entries are invalid (docs/key-volume.md)."""

    code = "invalid_key_volume"


class KeyUnavailable(VvgError):
    """A key held outside the tables (KMS / Secrets Manager) could not be used."""

    status_code = 500
    code = "key_unavailable"


class CheckpointUnavailable(VvgError):
    """The checkpoint bucket or signing key could not be used."""

    status_code = 500
    code = "checkpoint_unavailable"


class HostKeyError(ValueError):
    """A key that is not a usable Ed25519 key (docs/host-keys.md); the message never repeats the key's bytes.
    A ValueError, not a VvgError: callers turn it into their own answer (InvalidInput, a CLI line)."""


class ProviderUnavailable(VvgError):
    """The storage provider failed after retries."""

    status_code = 503
    code = "provider_unavailable"


class ProviderRefused(VvgError):
    """A provider call that retrying cannot fix (instance gone, device name taken, volume in another zone,
    IncorrectState): the event's decision for that volume is `failed` with this reason, and what the event
    did is undone (docs/webhook-api.md)."""

    status_code = 200
    code = "provider_refused"

    def __init__(self, reason: str, message: str = "") -> None:
        super().__init__(message or reason)
        self.reason = reason
