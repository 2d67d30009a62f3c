"""Prompt text for the whole-file edit format."""

INSTRUCTIONS = """\
## How to reply
Describe your change in one or two sentences, then give the complete new content of every file you
change, each as its path on a line of its own followed by a fenced code block:

### File: path/to/file.py
```python
the whole file, from its first line to its last
```

Rules:
- Always give the whole file: nothing may be elided ("..." or "rest unchanged" breaks the file).
- Files you do not list stay as they are. A new path creates a new file.
- If the file contains lines of three backticks, fence it with four or more backticks.
- If you decide that no change should be made, reply with exactly: NO CHANGE
"""

NOTHING_FOUND = """\
Your reply contained no file. Give each changed file as a line `### File: path` followed by a fenced
code block holding the whole new content, or reply with exactly NO CHANGE."""

ELIDED = """\
The new content of {path} looks elided (it contains "{marker}"). Give the whole file, every line of it."""

UNCLOSED = """\
The code block for {path} is not closed: the reply ended inside it, so it was probably cut off. Send the
whole file again, with the closing {fence} alone on the line after its last line."""
