"""The one error class users see: a message that says what to do, shown as one line."""


class SinkscopeError(Exception):
    """Bad input or an unusable model/data, detected at the boundary.

    The CLI prints ``str(err)`` on one line and exits with code 2; ``--debug`` shows the traceback.
    """
