"""The one exception type for user mistakes: the CLI prints it as a single line, no traceback."""

import re

# Control characters and line separators (a newline in a file name, an escape sequence in a YAML key) and lone
# surrogates (bytes of a file name that are not UTF-8): shown escaped, so that a message stays one printable line.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def one_line(text: str) -> str:
    """`text` with every control character and lone surrogate written as its Python escape (`\\n`, `\\udcff`)."""
    return _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape", "backslashreplace").decode("ascii")
                            if not 0xD800 <= ord(m.group()) <= 0xDFFF else f"\\u{ord(m.group()):04x}", text)


class UserError(Exception):
    """A problem with the user's input (file, config key, shard...) that the user can fix.

    The message must say what is wrong and how to fix it, in one line: names taken from the user's files keep
    their text, but control characters in them are shown escaped.
    """

    def __init__(self, message: object = "", *args: object) -> None:
        super().__init__(one_line(message) if isinstance(message, str) else message, *args)
