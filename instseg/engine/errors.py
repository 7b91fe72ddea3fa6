"""Errors that reach a user as one clear message (train_net.py prints them without a traceback)."""


class UserError(RuntimeError):
    """A problem the user can fix: a bad config key, an unregistered dataset, a missing folder."""
