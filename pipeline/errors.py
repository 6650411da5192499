"""Errors a user can cause: the CLI prints their message and exits non-zero, without a traceback."""


class UserError(Exception):
    """A bad path, recipe key, input or option: one clear message for the user."""
