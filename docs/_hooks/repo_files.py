"""MkDocs hook: serve a few repository files from outside ``docs/`` at their repository paths.

The site shows ``ARCHITECTURE.md``, ``CHANGELOG.md``, ``CONTRIBUTING.md``, the pages
``benchmarks/*.md`` and every plot under ``benchmarks/`` without copies: each is added to the
build as a file whose URL is its path in the repository (``benchmarks/out/hybrid.png`` is
served at ``benchmarks/out/hybrid.png``).
Pages link to them as GitHub renders them: a guide under ``docs/`` writes
``../benchmarks/out/hybrid.png`` and that link is pointed at the served file. A relative link
to any other file of the repository (a notebook, a script, a module) becomes a link to that
file on ``repo_url``. Links to files that exist nowhere are left alone, so ``mkdocs build
--strict`` still reports them.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

from mkdocs.structure.files import File

# Repository files served by the site, besides docs/ (glob patterns from the repository root).
SERVED = (
    "ARCHITECTURE.md",
    "CHANGELOG.md",
    "CONTRIBUTING.md",
    "benchmarks/*.md",
    "benchmarks/**/*.png",
)

# [text](target) and ![alt](target "title"); the target has no spaces.
_LINK = re.compile(r"(!?\[[^\]]*\]\()([^)\s]+)((?:\s+\"[^\"]*\")?\))")
_FENCE = re.compile(r"^(```|~~~)")


def _root(config) -> Path:
    return Path(config.config_file_path).resolve().parent


def on_files(files, config):
    root = _root(config)
    for pattern in SERVED:
        for path in sorted(root.glob(pattern)):
            rel = path.relative_to(root).as_posix()
            if files.get_file_from_path(rel) is None:
                files.append(File(rel, str(root), config.site_dir, config.use_directory_urls))
    return files


def _repo_path(page, config) -> str:
    """The page's source file as a path from the repository root."""
    root = _root(config)
    return Path(page.file.abs_src_path).resolve().relative_to(root).as_posix()


def on_page_markdown(markdown, page, config, files):
    root = _root(config)
    repo_url = (config.repo_url or "").rstrip("/")
    page_dir = posixpath.dirname(_repo_path(page, config))
    src_dir = posixpath.dirname(page.file.src_uri)

    def rewrite(match: re.Match) -> str:
        head, target, tail = match.groups()
        if re.match(r"^[a-z][a-z0-9+.-]*:|^#|^/", target):
            return match.group(0)
        path, sep, anchor = target.partition("#")
        in_site = posixpath.normpath(posixpath.join(src_dir, path))
        if not in_site.startswith("../") and files.get_file_from_path(in_site) is not None:
            return match.group(0)  # an ordinary link inside the site
        in_repo = posixpath.normpath(posixpath.join(page_dir, path))
        if in_repo.startswith("../") or not (root / in_repo).exists():
            return match.group(0)  # broken: let mkdocs report it
        if files.get_file_from_path(in_repo) is not None:
            new = posixpath.relpath(in_repo, src_dir or ".")
        elif repo_url:
            kind = "tree" if (root / in_repo).is_dir() else "blob"
            new = f"{repo_url}/{kind}/main/{in_repo}"
        else:
            return match.group(0)
        return f"{head}{new}{sep}{anchor}{tail}"

    # Rewrite prose only, not fenced code; a link's text may span lines.
    out, prose, fenced = [], [], False
    for line in markdown.split("\n"):
        if _FENCE.match(line.lstrip()):
            if not fenced and prose:
                out.append(_LINK.sub(rewrite, "\n".join(prose)))
                prose = []
            fenced = not fenced
            out.append(line)
        elif fenced:
            out.append(line)
        else:
            prose.append(line)
    if prose:
        out.append(_LINK.sub(rewrite, "\n".join(prose)))
    return "\n".join(out)
