"""The one exception type for user mistakes: the CLI prints it as a single line, no traceback."""


class UserError(Exception):
    """A problem with the user's input (file, config key, shard...) that the user can fix.

    The message must say what is wrong and how to fix it, in one line.
    """
