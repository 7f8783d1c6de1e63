"""The dashboard's static files: the vendored libraries are the files scripts/vendor-web took from the npm
registry (their checksums), each with its licence, and every file a template names exists."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

STATIC = Path(__file__).parent.parent / "pheanq" / "web" / "static"
TEMPLATES = STATIC.parent / "templates"


def test_the_vendored_files_are_the_ones_recorded_with_their_licences() -> None:
    lines = [line.split() for line in (STATIC / "VENDORED.txt").read_text().splitlines()
             if line and not line.startswith("#")]
    assert {name for name, _, _ in lines} >= {"htmx.min.js", "uPlot.iife.min.js", "uPlot.min.css",
                                              "htmx.LICENSE.txt", "uPlot.LICENSE.txt"}
    for name, package, digest in lines:
        assert hashlib.sha256((STATIC / name).read_bytes()).hexdigest() == digest, f"{name} is not {package}'s"


def test_every_static_file_a_template_names_exists() -> None:
    named = {found for template in TEMPLATES.glob("*.html")
             for found in re.findall(r"/static/([\w.-]+)", template.read_text())}
    assert named >= {"htmx.min.js", "uPlot.iife.min.js", "pheanq.js", "pheanq.css"}
    assert not [name for name in named if not (STATIC / name).is_file()]


def test_no_template_has_an_inline_script_or_style_the_policy_would_refuse() -> None:
    for template in TEMPLATES.glob("*.html"):
        text = template.read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", text), template.name
        assert "<style" not in text and " style=" not in text and not re.search(r"\son[a-z]+=", text), template.name
