"""Typed errors. Each carries the exit code the entry uses and a message that says the fix."""

EXIT_OK = 0
EXIT_FAILURES = 1  # finished, but some samples failed
EXIT_INPUT = 2  # config, test set, model name, missing package, results folder or database
EXIT_BACKEND = 3  # backend unreachable
EXIT_LOCKED = 4  # another run holds the results folder
# interrupted: 128 + the signal, 130 after Ctrl-C and 143 after SIGTERM (outcome.Interrupted)


class RagsweepError(Exception):
    """Base: the entry prints str(error) on one line and exits with exit_code."""

    exit_code = EXIT_INPUT


class ConfigError(RagsweepError):
    """A config file, flag or environment value is invalid."""


class InputError(RagsweepError):
    """The corpus or test set is missing or malformed."""


class StorageError(RagsweepError):
    """The results folder or database cannot be used (a file, read-only, full, locked, not ours)."""


class ModelNotFoundError(RagsweepError):
    """A requested model does not exist for the chosen backend."""


class MissingPackageError(RagsweepError):
    """An optional package is not installed."""

    def __init__(self, what: str, requirement: str, no_deps: bool = False):
        flags = "--no-deps " if no_deps else ""
        super().__init__(f"{what} needs the package {requirement.split('=')[0]} — run: pip install {flags}{requirement}")


class BackendUnavailableError(RagsweepError):
    """The model server cannot be reached."""

    exit_code = EXIT_BACKEND


class RunLockedError(RagsweepError):
    """Another run is using the same results folder."""

    exit_code = EXIT_LOCKED


class MemoryNotReleasedError(RagsweepError):
    """Memory did not come back after unloading models."""

    exit_code = EXIT_FAILURES


CONTEXT_OVERFLOW = "context overflow"  # a prompt longer than the model's context: refused, never cut, and not retried


class ModelCallError(RagsweepError):
    """One call into a loaded model failed; recorded as data, never fatal to the sweep."""

    def __init__(self, message: str, cause: str = "error"):
        super().__init__(message)
        self.cause = cause


class ModelUnavailableError(ModelCallError):
    """A model cannot be (re)loaded even after the out-of-memory ladder: the rest of its work fails."""


class FailureBudgetExceededError(RagsweepError):
    """Too many samples failed: stop instead of grinding through the night (resumable)."""

    exit_code = EXIT_FAILURES
