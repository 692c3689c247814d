#!/usr/bin/env python3
"""Checks bench/results_section.py: python3 bench/results_section_test.py"""

import os
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from results_section import replace_section, replace_text  # noqa: E402


class ReplaceSection(unittest.TestCase):
    def test_replaces_only_its_own_section(self):
        page = ("# R\n\n<!-- BEGIN a -->\nold a\n<!-- END a -->\n\ntext\n"
                "<!-- BEGIN b -->\nold b\n<!-- END b -->\n")
        new = replace_text(page, "a", "new a\n")
        self.assertEqual(new, page.replace("old a", "new a"))

    def test_adds_a_missing_section_at_the_end(self):
        new = replace_text("# R\n", "e2e.sh", "x")
        self.assertEqual(new, "# R\n\n<!-- BEGIN e2e.sh -->\nx\n<!-- END e2e.sh -->\n")

    def test_a_broken_page_is_refused_not_rewritten(self):
        with self.assertRaises(ValueError):
            replace_text("<!-- BEGIN a -->\nno end\n", "a", "x")
        with self.assertRaises(ValueError):
            replace_text("", "a -->", "x")

    def test_creates_the_file(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "sub", "RESULTS.md")
            replace_section("lbgen", "one\n", path)
            replace_section("lbgen", "two\n", path)
            with open(path) as f:
                text = f.read()
            self.assertIn("<!-- BEGIN lbgen -->\ntwo\n<!-- END lbgen -->", text)
            self.assertNotIn("one", text)


if __name__ == "__main__":
    unittest.main()
