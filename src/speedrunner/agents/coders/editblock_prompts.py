"""Prompt text for the SEARCH/REPLACE edit format."""

INSTRUCTIONS = """\
## How to reply
Describe your change in one or two sentences, then give every edit as a SEARCH/REPLACE block:

path/to/file.py
<<<<<<< SEARCH
lines copied exactly from the current file
=======
the lines that replace them
>>>>>>> REPLACE

Rules:
- Put the file's path alone on the line before each block.
- The SEARCH part must match the current file exactly, character for character, and only once:
  include enough surrounding lines to make it unique. Keep blocks small.
- Use several blocks for several places; they are applied in order.
- To create a new file, leave the SEARCH part empty.
- If you decide that no change should be made, reply with exactly: NO CHANGE
"""

NOTHING_FOUND = """\
Your reply contained no SEARCH/REPLACE block. Give each edit as:

path/to/file.py
<<<<<<< SEARCH
exact current lines
=======
new lines
>>>>>>> REPLACE

or reply with exactly NO CHANGE if no change should be made."""

NO_MATCH = """\
The SEARCH part of block {index} for {path} matched nothing in the current file. It must match exactly,
including whitespace, comments and blank lines. {closest}
Send the whole reply again with corrected blocks (all blocks are applied together)."""

CLOSEST = """The most similar lines in {path} are:
```
{lines}
```"""

AMBIGUOUS = """\
The SEARCH part of block {index} for {path} matches {count} places. Add surrounding lines to the SEARCH
part so that it matches exactly one place, then send the whole reply again."""

NO_FILE = """\
Block {index} edits {path}, which does not exist. Existing files: {files}. To create a new file, leave the
SEARCH part empty."""

EXISTS = """\
Block {index} has an empty SEARCH part for {path}, but that file already exists. An empty SEARCH part only
creates new files; quote the lines you want to replace."""

NO_PATH = """\
Block {index} has no file path. Put the path alone on the line just before <<<<<<< SEARCH."""

UNCLOSED = """\
Block {index} is not closed: every block needs the three markers <<<<<<< SEARCH, ======= and
>>>>>>> REPLACE, each alone on its line."""

TWO_DIVIDERS = """\
Block {index} has more than one ======= line between <<<<<<< SEARCH and >>>>>>> REPLACE. If the file
itself contains such a line, choose SEARCH lines around it instead, so that each block has exactly one."""
