"""MkDocs hooks: the site's home is README.md and its security policy SECURITY.md, both kept at the
repository's root (where GitHub shows them) and read from there, so neither is copied into docs/."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).parents[1]
# Site page -> the root file whose text it shows.
FROM_ROOT = {"index.md": "README.md", "policy.md": "SECURITY.md"}
LINK = re.compile(r"\[([^\]]+)\]\(([^)#:]+)(#[^)]*)?\)")


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    name = FROM_ROOT.get(page.file.src_uri)
    return markdown if name is None else as_docs_page((ROOT / name).read_text())


def as_docs_page(text: str) -> str:
    """Links written from the root, made good from docs/: docs/X stays a link (to X), the two
    root pages link to their site pages, and any other repository file becomes its path in code,
    since the site holds only docs/."""

    def relink(link: re.Match[str]) -> str:
        label, target, anchor = link[1], link[2], link[3] or ""
        if target.startswith("docs/"):
            return f"[{label}]({target.removeprefix('docs/') or 'index.md'}{anchor})"
        site_page = {root: page for page, root in FROM_ROOT.items()}.get(target)
        if site_page:
            return f"[{label}]({site_page}{anchor})"
        return label if label.startswith("`") else f"`{target}`"

    return LINK.sub(relink, text)
