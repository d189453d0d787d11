"""URLs of the dashboard's pages and of files inside run folders."""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import quote, urlencode

#: URL prefix of files served from run folders.
FILES_PREFIX = "/files"


def page_url(run_ids: Sequence[str]) -> str:
    """The page of one run, or of several evaluations side by side (``/?run=A&run=B``)."""
    if not run_ids:
        return "/"
    return "/?" + urlencode([("run", r) for r in run_ids])


def file_url(run_id: str, relative: str) -> str:
    """The URL of ``relative`` (a path inside the run folder of ``run_id``)."""
    root, _, run_path = run_id.partition("/")
    parts = [p for p in (run_path, relative) if p and p != "."]
    return f"{FILES_PREFIX}/{quote(root)}/" + "/".join(quote(p, safe="/") for p in parts)
