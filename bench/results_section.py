#!/usr/bin/env python3
"""Replaces one bench script's section of bench/results/RESULTS.md.

Each script owns the text between `<!-- BEGIN <script> -->` and
`<!-- END <script> -->` and rewrites only that, so the page shows what the
scripts measured, never figures typed in by hand. The file and the section are
created when missing (a new section goes at the end). Written atomically
(temp file + rename), so a crash never leaves half a page.

  python3 bench/results_section.py SCRIPT [--file PATH] < section.md
  from results_section import replace_section      # from Python scripts

`SHOAL_RESULTS_MD` overrides the page's path (used to try it on a scratch copy).
"""

import argparse
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_MD = os.path.join(ROOT, "bench", "results", "RESULTS.md")


def default_path():
    return os.environ.get("SHOAL_RESULTS_MD", RESULTS_MD)


def markers(script):
    if not script or any(c in script for c in "<>\n") or "--" in script:
        raise ValueError(f"not a usable section name: {script!r}")
    return f"<!-- BEGIN {script} -->", f"<!-- END {script} -->"


def replace_text(page, script, body):
    """`page` with `script`'s section holding `body` (added at the end if missing)."""
    begin, end = markers(script)
    block = f"{begin}\n{body.rstrip()}\n{end}"
    start = page.find(begin)
    if start < 0:
        sep = "" if not page or page.endswith("\n\n") else ("\n" if page.endswith("\n") else "\n\n")
        return f"{page}{sep}{block}\n"
    stop = page.find(end, start)
    if stop < 0:
        raise ValueError(f"{begin} has no {end}: fix the page by hand")
    if page.find(begin, start + len(begin)) >= 0:
        raise ValueError(f"{begin} appears twice: fix the page by hand")
    return page[:start] + block + page[stop + len(end):]


def replace_section(script, body, path=None):
    path = path or default_path()
    try:
        with open(path, encoding="utf-8") as f:
            page = f.read()
    except FileNotFoundError:
        page = "# Benchmark results\n\nEach section is written by the script named in its markers.\n"
    new = replace_text(page, script, body)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".RESULTS.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(new)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    print(f"{path}: section {script} updated", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("script", help="the section's name (the script that owns it)")
    ap.add_argument("--file", help="the page (default: bench/results/RESULTS.md or $SHOAL_RESULTS_MD)")
    args = ap.parse_args()
    body = sys.stdin.read()
    if not body.strip():
        sys.exit(f"results_section: empty section for {args.script}: nothing measured, page left as it was")
    try:
        replace_section(args.script, body, args.file)
    except ValueError as e:
        sys.exit(f"results_section: {e}")


if __name__ == "__main__":
    main()
