#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""check_doc_quotes.py - every C code block of CONTRIBUTING.md is quoted from the source.

A block is checked against the last source file the text names before it (a backticked path such
as `runtime/db.c`): its text must appear in that file verbatim, in one piece, or in pieces in
order where the block elides lines with a line holding only "..." (indentation allowed). A block
that names no file before it, or one whose file is gone, fails too: examples that merely look
like the code drift from it.

    check_doc_quotes.py SOURCE_DIR
"""
import os
import re
import sys

PATH = re.compile(r"`((?:runtime|service|handlers|tests)/[\w./-]+\.[ch])`")


def blocks(text):
    """Yields (line number, the file named last before the block, the block's text)."""
    named = None
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        if lines[i].strip() == "```c":
            start = i + 1
            j = start
            while j < len(lines) and lines[j].strip() != "```":
                j += 1
            yield start, named, "\n".join(lines[start:j])
            i = j + 1
            continue
        found = PATH.findall(lines[i])
        if found:
            named = found[-1]
        i += 1


def quoted(block, source):
    pieces = re.split(r"(?m)^[ \t]*\.\.\.[ \t]*\n?", block)
    at = 0
    for piece in pieces:
        piece = piece.strip("\n")
        if not piece:
            continue
        at = source.find(piece, at)
        if at < 0:
            return False
        at += len(piece)
    return True


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "."
    with open(os.path.join(root, "CONTRIBUTING.md"), encoding="utf-8") as f:
        text = f.read()
    bad = 0
    count = 0
    for line, named, block in blocks(text):
        count += 1
        if named is None:
            print(f"CONTRIBUTING.md:{line}: a code block that names no source file before it")
            bad += 1
            continue
        try:
            with open(os.path.join(root, named), encoding="utf-8") as f:
                source = f.read()
        except OSError:
            print(f"CONTRIBUTING.md:{line}: {named} does not exist")
            bad += 1
            continue
        if not quoted(block, source):
            print(f"CONTRIBUTING.md:{line}: the block is not in {named} as written")
            bad += 1
    print(f"check_doc_quotes: {count} block(s), {bad} not quoted from the source")
    return 1 if bad or count == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
