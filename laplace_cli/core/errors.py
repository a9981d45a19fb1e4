"""Exceptions that the CLI maps to exit codes (0 ok, 1 gate failed, 2 bad input, 3 numerical)."""

from __future__ import annotations


class LaplaceCliError(Exception):
    """Base class: every error of this tool carries an exit code and a one-line message."""

    exit_code: int = 2


class BadInputError(LaplaceCliError, ValueError):
    """Bad usage or bad input: a file, key, row, shape or option the user can fix (exit 2)."""

    exit_code = 2


class MissingKeyError(BadInputError, KeyError):
    """A dict batch lacks its input or target key, or a module name is not in the model (also
    a `KeyError`, as in laplace-torch)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class MissingArgumentError(BadInputError, TypeError):
    """A required argument is missing or None (also a `TypeError`, as Python raises for a
    missing argument of laplace-torch's signatures)."""


class NotImplementedYetError(BadInputError):
    """A feature that is not built yet (exit 2, no fake output)."""


class FingerprintMismatchError(BadInputError):
    """A posterior applied to a model whose parameters differ from the ones it was fitted on."""


class MemoryBudgetError(BadInputError, MemoryError):
    """A requested computation would need more memory than allowed; the message says what to use instead."""


class OutOfMemory(LaplaceCliError, MemoryError):
    """The device (CUDA) or the host ran out of memory in the middle of a step (exit 3).

    Unlike `MemoryBudgetError` (refused before allocating, exit 2), the work had started; the
    message names the step, the batch size in use and what to lower."""

    exit_code = 3


class NumericalError(LaplaceCliError, ArithmeticError):
    """Non-finite curvature or loss, or a matrix not positive definite after jitter (exit 3)."""

    exit_code = 3


class GateFailed(LaplaceCliError):
    """An evaluation gate (`--fail-if`) failed (exit 1)."""

    exit_code = 1


class LaplaceWarning(UserWarning):
    """A result to look at, not an error: the CLI prints each one once as `warning: ...`
    (and `tune --json` lists them); the Python API raises them as ordinary warnings."""
