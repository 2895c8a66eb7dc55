"""Errors a user can act on: the CLI prints them as one line and exits with their code."""


class UserError(Exception):
    """Bad input or environment. Printed as ``trtllm-stack: <message>``, no traceback."""

    exit_code = 2

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code
