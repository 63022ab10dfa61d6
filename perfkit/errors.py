"""Errors the CLI prints as one line.

- UserError: a problem the user can fix (bad input, bad params, no GPU, unwritable output):
  `error: <what> — <fix>`, exit code 2.
- CheckFailed: one of the run's own checks (counts, alignment, uniqueness) failed, i.e. a bug or a corrupted
  run, not something the user did: `error: <which check> failed: <what>`, exit code 3.
"""

import os

# a launcher's ranks write a failed check's message here (one line each), so the launcher can report it:
# torchrun itself exits 1 whatever the rank's code was
CHECK_FAILED_FILE_ENV = "PERFKIT_CHECK_FAILED_FILE"


class UserError(Exception):
    """A problem in the user's input or environment, with the fix in the message."""

    exit_code = 2

    def __init__(self, problem: str, fix: str = ""):
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem} — {fix}" if fix else problem)

    def one_line(self) -> str:
        return "error: " + " ".join(str(self).split())


class CheckFailed(RuntimeError):
    """An internal check failed (message starts '<count|alignment|uniqueness> check failed')."""

    exit_code = 3

    def one_line(self) -> str:
        return "error: " + " ".join(str(self).split())


def report_check_failed(err: CheckFailed, env=os.environ) -> None:
    """In a rank: leave the failed check for the launcher (no-op outside our launcher)."""
    path = env.get(CHECK_FAILED_FILE_ENV)
    if path:
        with open(path, "a") as f:
            f.write(" ".join(str(err).split()) + "\n")


def check_failed_in_ranks(path) -> CheckFailed | None:
    """The launcher: the first check a rank reported as failed, or None."""
    try:
        with open(path) as f:
            lines = [line.strip() for line in f if line.strip()]
    except OSError:
        return None
    return CheckFailed(lines[0]) if lines else None
