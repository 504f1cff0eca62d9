"""Text that is safe to print: tensor names come from files, and files can be crafted."""


def printable(text: object) -> str:
  """`str(text)` with every character that is not printable written as a Python escape.

  Terminal escape sequences, carriage returns, newlines and the other control and format
  characters (such as U+202E, which reverses the text after it) become `\\x1b`, `\\r`, `\\n`,
  `\\u202e`, so a crafted tensor name cannot forge, hide or reorder lines of output. Printable
  text, non-ASCII letters included, is unchanged.

  Example:
    >>> printable("dense/kernel\\x1b[2K\\rloaded")
    'dense/kernel\\\\x1b[2K\\\\rloaded'
  """
  text = str(text)
  if text.isprintable():
    return text
  return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


def printable_lines(lines) -> str:
  """Lines joined with newlines, each made `printable` (so only the joins are newlines)."""
  return "\n".join(printable(line) for line in lines)
