"""The README and docs/ cannot rot: links resolve, cited sections exist, paths in prose exist.

* every relative link of README.md, docs/*.md and saved_models/README.md points to a file or
  folder of the repository, and a `#anchor` to a heading of the target page;
* every repository path written in backticks (`cfimage/...`, `scripts/...`, `configs/...`)
  exists;
* every section that code cites as `docs/<page>.md, "Section"` is a heading of that page, and
  every `README, "Section"` a heading of the README or of a page in docs/ (the README is a
  front page; its former sections live in docs/);
* nothing cites the paper notes that are not in the repository.
"""

import glob
import os
import re

import pytest

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), ".."))
PAGES = sorted(["README.md", "saved_models/README.md",
                *(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))])
# The README's code map: one hop from each step of the pipeline to its module.
CODE_MAP = [
    "cfimage/train.py", "cfimage/train_flags.py", "cfimage/config.py",
    "cfimage/catalogue/reader.py", "cfimage/stage1/pipeline.py", "cfimage/stage1/two_tower.py",
    "cfimage/stage2/data.py", "cfimage/stage2/model.py", "cfimage/stage2/cached.py",
    "cfimage/stage2/losses.py",
    "cfimage/stage2/arms.py", "cfimage/stage2/fit.py", "cfimage/serving/export.py",
    "cfimage/experiment.py", "cfimage/experiments/runner.py", "cfimage/experiments/report.py",
    "cfimage/errors.py",
]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.M | re.S)
INLINE_CODE = re.compile(r"`[^`\n]*`")
CODE_PATH = re.compile(r"`((?:cfimage|scripts|configs)/[\w./-]*)`")
CITATION = re.compile(r"(README|docs/[\w/]+\.md),?\s+[\"']([^\"'\n]+)[\"']")


def read(path):
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        return f.read()


def prose(text):
    """The text without fenced code blocks (links and paths in examples are not checked)."""
    return FENCE.sub("", text)


def headings(path):
    return [line.lstrip("#").strip() for line in prose(read(path)).splitlines()
            if line.startswith("#")]


def anchors(path):
    """GitHub's anchors: lower case, punctuation dropped, spaces to hyphens, -1 for repeats."""
    seen, result = {}, set()
    for heading in headings(path):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        result.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return result


@pytest.mark.parametrize("page", PAGES)
def test_relative_links_resolve(page):
    broken = []
    for target in LINK.findall(INLINE_CODE.sub("", prose(read(page)))):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        resolved = (os.path.normpath(os.path.join(os.path.dirname(page), path)) if path
                    else page)
        if not os.path.exists(os.path.join(ROOT, resolved)):
            broken.append(f"{target} (no {resolved})")
        elif anchor and resolved.endswith(".md") and anchor not in anchors(resolved):
            broken.append(f"{target} (no heading #{anchor} in {resolved})")
    assert not broken, f"{page}: broken links: {broken}"


@pytest.mark.parametrize("page", PAGES)
def test_paths_in_prose_exist(page):
    missing = [path for path in CODE_PATH.findall(prose(read(page)))
               if not os.path.exists(os.path.join(ROOT, path.rstrip(".")))]
    assert not missing, f"{page} names paths that do not exist: {missing}"


def test_the_code_map_sends_each_step_to_an_existing_module():
    readme = read("README.md")
    for path in CODE_MAP:
        assert f"({path})" in readme, f"the README's code map does not link {path}"
        assert os.path.isfile(os.path.join(ROOT, path)), f"the code map's {path} does not exist"


def source_files():
    """The project's Python files, except this one (its docstring quotes the patterns)."""
    for folder in ("cfimage", "tests", "scripts"):
        for path in glob.glob(os.path.join(ROOT, folder, "**", "*.py"), recursive=True):
            if os.path.abspath(path) != os.path.abspath(__file__):
                yield path


def test_sections_cited_by_the_code_exist():
    docs_headings = [h for page in PAGES if page.startswith("docs/") for h in headings(page)]
    cited = 0
    for source in source_files():
        with open(source, encoding="utf-8") as f:
            # Adjacent string literals ("...see README, "\n "'Section')") read as one.
            text = re.sub(r"[\"']\s*\n\s*[\"']", "", f.read())
        for page, section in CITATION.findall(text):
            known = (headings("README.md") + docs_headings if page == "README"
                     else headings(page) if os.path.isfile(os.path.join(ROOT, page)) else [])
            assert any(section.lower() in h.lower() for h in known), (
                f"{os.path.relpath(source, ROOT)} cites {page}, {section!r}: no such heading")
            cited += 1
    assert cited >= 5  # the pattern still finds the citations


def test_nothing_cites_paper_notes_outside_the_repository():
    name = "PAPER" + ".md"
    citing = [os.path.relpath(path, ROOT)
              for path in [*source_files(), *(os.path.join(ROOT, page) for page in PAGES)]
              if name in open(path, encoding="utf-8").read()]
    assert not citing, f"{citing} cite {name}, which is not in the repository"
