"""User-facing errors and the exit codes they map to.

Every problem the user can fix (bad arguments, bad input data, missing resources)
is raised as a :class:`MorphoBIDSError`: the CLI prints its one-line message and
exits with its code, without a traceback unless ``--debug`` is given. Codes follow
BSD ``sysexits.h``, as BIDS Apps do for usage errors (64).
"""

from __future__ import annotations

EX_OK = 0
EX_USAGE = 64  # bad command line: arguments, labels, output_dir placement
EX_DATAERR = 65  # input data is wrong: not BIDS, bad NIfTI, missing T1w
EX_NOINPUT = 66  # an input that must exist does not (bids_dir, derivatives)
EX_SOFTWARE = 70  # internal error (a bug): printed with a traceback hint
EX_CANTCREAT = 73  # output_dir / work_dir cannot be written
EX_UNAVAILABLE = 69  # a required resource (template, atlas, model, tool) is missing
EX_PARTIAL = 1  # some participants failed, others completed


class MorphoBIDSError(Exception):
    """An error the user can act on: ``message`` says what is wrong, ``hint`` how to fix it."""

    exit_code = EX_DATAERR

    def __init__(self, message: str, hint: str | None = None, exit_code: int | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code

    def __str__(self) -> str:
        return f"{self.message} {self.hint}" if self.hint else self.message


class UsageError(MorphoBIDSError):
    """Bad command-line arguments (exit 64)."""

    exit_code = EX_USAGE


class InputDataError(MorphoBIDSError):
    """The BIDS dataset or one of its files is unusable (exit 65)."""

    exit_code = EX_DATAERR


class MissingInputError(MorphoBIDSError):
    """Something that must already exist does not (exit 66)."""

    exit_code = EX_NOINPUT


class OutputError(MorphoBIDSError):
    """The output or work directory cannot be created or written (exit 73)."""

    exit_code = EX_CANTCREAT


class ResourceError(MorphoBIDSError):
    """A template, atlas, model or tool is not available offline (exit 69)."""

    exit_code = EX_UNAVAILABLE
