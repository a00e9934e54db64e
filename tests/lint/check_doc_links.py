# SPDX-License-Identifier: MIT
"""Every relative link of the documentation leads somewhere.

For README.md, API.md, CONTRIBUTING.md and docs/*.md: each Markdown link or image whose target
is not a URL (http:, https:, mailto:) must name a file or folder that exists, relative to the
document; a `#anchor`, alone or after a Markdown file, must be a heading of that file, as GitHub
turns headings into anchors (lower case, punctuation dropped, spaces to dashes, -1, -2 ... for
repeats). Links inside code (fenced blocks, `inline`) are not links. Prints each broken link as
file:line: target (why) and exits 1 when there is any.

    python3 tests/lint/check_doc_links.py [SOURCE_DIR]
"""

import glob
import os
import re
import sys

ROOT = (sys.argv[1] if len(sys.argv) > 1 else None) or os.environ.get("HS_SOURCE_DIR") or \
    os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

# [text](target) and ![alt](target); the text may hold one level of brackets (`[a [b]](c)`).
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def documents():
    names = ["README.md", "API.md", "CONTRIBUTING.md"]
    names += sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))
    return [n for n in names if os.path.exists(os.path.join(ROOT, n))]


def prose_lines(path):
    """(number, line) of every line outside fenced code, with inline code blanked out."""
    fenced = False
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if FENCE.match(line):
                fenced = not fenced
                continue
            if fenced or line.startswith("    ") and not line.lstrip().startswith(("-", "*", "|")):
                continue
            yield n, re.sub(r"(`+)(.+?)\1", lambda m: " " * len(m.group(0)), line)


def slug(text):
    """GitHub's anchor for a heading's text."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link in a heading keeps its text
    text = text.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path, cache={}):
    if path not in cache:
        seen = {}
        found = set()
        fenced = False
        with open(path, encoding="utf-8") as f:
            for line in f:
                if FENCE.match(line):
                    fenced = not fenced
                    continue
                m = None if fenced else HEADING.match(line)
                if not m:
                    continue
                base = slug(m.group(2))
                n = seen.get(base, 0)
                seen[base] = n + 1
                found.add(base if n == 0 else "%s-%d" % (base, n))
        cache[path] = found
    return cache[path]


def check(doc):
    problems = []
    here = os.path.dirname(os.path.join(ROOT, doc))
    for n, line in prose_lines(os.path.join(ROOT, doc)):
        for m in LINK.finditer(line):
            target = m.group(1)
            if not target or re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):
                continue
            file_part, _, anchor = target.partition("#")
            dest = os.path.normpath(os.path.join(here, file_part)) if file_part else \
                os.path.join(ROOT, doc)
            if not os.path.exists(dest):
                problems.append("%s:%d: %s (no such file)" % (doc, n, target))
                continue
            if anchor and dest.endswith(".md") and anchor not in anchors(dest):
                problems.append("%s:%d: %s (no heading #%s in %s)" %
                                (doc, n, target, anchor, os.path.relpath(dest, ROOT)))
    return problems


def main():
    docs = documents()
    problems = [p for d in docs for p in check(d)]
    for p in problems:
        print(p)
    if problems:
        print("check_doc_links: FAILED: %d broken link(s)" % len(problems))
        return 1
    print("check_doc_links: every relative link of %s leads somewhere" % ", ".join(docs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
