"""Errors the CLI prints without a traceback (exit code 2)."""

from spritegen.config import ConfigError  # re-exported: a bad param is a user error too

__all__ = ["ConfigError", "UserError"]


class UserError(Exception):
    """Bad input from the user (a file, a folder, an argument, a checkpoint): the message names it."""
