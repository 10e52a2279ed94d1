"""Where the composer's Jinja2 templates come from: the campaign folders under DRIP_TEMPLATES_DIR (and the
shared layout `_base/`), or a campaign version published in the database, whose files travel with the
campaign. A step written in Markdown (`week-05.md`) is served as the `.html` and `.txt` templates made
from it (compose/markdown.py), so everything downstream renders it like a hand-written pair.

A database version is served under its own folder name (`back-pain-bundle@3/week-05.html`): Jinja2
compiles a template once per name, so a new version can never be rendered with an old one's code.
"""
from __future__ import annotations

from pathlib import Path

from jinja2 import BaseLoader, Environment, FileSystemLoader, TemplateNotFound

from service.campaigns.model import Campaign
from service.compose import markdown

VIRTUAL = {"_drip/macros.txt": markdown.TEXT_MACROS}


class CampaignSources(BaseLoader):
    def __init__(self, templates_dir: Path) -> None:
        self.templates_dir = Path(templates_dir)
        self.folders = FileSystemLoader(str(templates_dir))
        self.versions: dict[str, Campaign] = {}  # template root -> campaign whose files are in memory

    def add(self, campaign: Campaign) -> str:
        """The template folder name of `campaign`, made known to the loader when its files are in memory."""
        root = campaign.template_root
        if campaign.files is not None and self.versions.get(root) is not campaign:
            self.versions[root] = campaign
        return root

    def get_source(self, environment: Environment, template: str):
        if template in VIRTUAL:
            return VIRTUAL[template], None, lambda: True
        root, _, name = template.partition("/")
        campaign = self.versions.get(root)
        if campaign is not None:
            text = _with_markdown(campaign.read, name)
            if text is None:
                raise TemplateNotFound(template)
            return text, f"{root}/{name}", lambda: True
        folder = self.templates_dir / root

        def read(file: str) -> str | None:
            path = folder / file
            return path.read_text(encoding="utf-8") if path.is_file() else None

        stem, dot, ext = name.rpartition(".")
        if dot and ext in ("html", "txt") and (folder / f"{stem}.md").is_file():
            text = _with_markdown(read, name)
            assert text is not None
            return text, str(folder / f"{stem}.md"), lambda: True
        return self.folders.get_source(environment, template)


def _with_markdown(read, name: str) -> str | None:
    """The template `name` (`week-05.html`): made from `week-05.md` when there is one, else the file."""
    stem, dot, ext = name.rpartition(".")
    if dot and ext in ("html", "txt"):
        body = read(f"{stem}.md")
        if body is not None:
            html, text = markdown.templates(body)
            return html if ext == "html" else text
    return read(name)
