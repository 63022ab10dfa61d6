"""One error type for problems the user can fix: bad input, bad params, no GPU, unwritable output.

The CLI prints it as one line, `error: <what> — <fix>`, and exits with code 2.
"""


class UserError(Exception):
    """A problem in the user's input or environment, with the fix in the message."""

    exit_code = 2

    def __init__(self, problem: str, fix: str = ""):
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem} — {fix}" if fix else problem)

    def one_line(self) -> str:
        return "error: " + " ".join(str(self).split())
