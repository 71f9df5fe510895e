"""The front page and the reference pages point only at things that exist: every relative markdown link in
README.md and docs/*.md resolves to a file or folder of the repository, and every repository path the text
names (`stylejax/...`, `tests/...`, `scripts/...`, `configs/...`, `convert/...`, `docs/...`) exists.
Cheap, and it fails the moment a file is moved or renamed without its docs."""
import glob
import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ["README.md"] + sorted(os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "docs", "*.md"))) + \
    sorted(os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "stylejax", "**", "README.md"), recursive=True))
# code whose docstrings and comments name test files ("see tests/align/test_stabilise.py"); not this file, whose
# self-check names missing ones on purpose
SOURCES = sorted(set(os.path.relpath(p, REPO) for folder in ("stylejax", "scripts", "convert", "tests", "configs")
                     for p in glob.glob(os.path.join(REPO, folder, "**", "*.py"), recursive=True))
                 - {os.path.join("tests", "test_docs.py")})

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
# a repository path written in the text, relative to the repository root (not part of a longer path)
REPO_PATH = re.compile(r"(?<![\w./-])((?:stylejax|tests|scripts|configs|convert|docs|\.ci)/[\w./*-]*)")
TEST_FILE = re.compile(r"(?<![\w./-])(tests/[\w./-]*\.py)\b")


def _text(page):
    with open(os.path.join(REPO, page), encoding="utf-8") as f:
        return f.read()


def broken_links(page, text):
    """Relative link targets of `page` (a path relative to the repo) that do not exist."""
    bad = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # external (https:, mailto:) or an anchor on the same page
        path = target.split("#", 1)[0]
        if not os.path.exists(os.path.normpath(os.path.join(REPO, os.path.dirname(page), path))):
            bad.append(target)
    return bad


def missing_paths(text):
    """Repository paths named in `text` (globs allowed) that match nothing."""
    bad = []
    for path in REPO_PATH.findall(text):
        path = path.rstrip(".")
        if not glob.glob(os.path.join(REPO, path)):
            bad.append(path)
    return bad


def test_pages_exist():
    assert "docs/README.md" in PAGES and len(PAGES) > 2, PAGES


@pytest.mark.parametrize("page", PAGES)
def test_relative_links_resolve(page):
    assert broken_links(page, _text(page)) == []


@pytest.mark.parametrize("page", PAGES)
def test_named_repository_paths_exist(page):
    assert missing_paths(_text(page)) == []


def test_test_files_named_in_the_code_exist():
    """Docstrings and comments that send the reader to a test file name one that exists (test files moved into
    tests/nets, tests/align, tests/stages, ... once; their old paths lingered in scripts)."""
    bad = {}
    for source in SOURCES:
        missing = [p for p in TEST_FILE.findall(_text(source)) if not os.path.isfile(os.path.join(REPO, p))]
        if missing:
            bad[source] = missing
    assert bad == {}


def test_checks_catch_breakage():
    # the checks themselves: a link to a missing page and a renamed module must be reported
    assert broken_links("docs/x.md", "see [a](nope.md#x), [b](encoder.md), [c](https://x.org/y)") == ["nope.md#x"]
    assert missing_paths("`stylejax/nets/generator.py`, `stylejax/stabilise.py`.") == ["stylejax/stabilise.py"]
    assert TEST_FILE.findall("see tests/test_stabilise.py's `fast`, not tests/align/x.pyc") == ["tests/test_stabilise.py"]
