"""The one exception type for mistakes a user can make (a bad flag, file, row or value).

Library code raises `UserError` (or a subclass, such as the catalogue's `CatalogueError`)
with a message that names the flag, file, line or value and says what would be valid; the
entry points (`python -m cfimage.train`, ...) catch it and print that one line.
"""


class UserError(ValueError):
    """A problem the user can fix: the message says which and how."""
