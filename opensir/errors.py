"""The one base class of errors a user can act on.

Their messages name the field, file, URL or object at fault; the CLI prints them without a traceback
and exits non-zero. Anything else escaping the CLI is a bug and keeps its traceback.
"""


class OpensirError(Exception):
    """An error whose message tells the user what is wrong and where."""
