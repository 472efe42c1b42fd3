"""The project's documentation is in the repository: every `docs/...` path a file names exists, links
between the docs resolve, and nothing points at developer notes users do not have."""

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# What a user gets: the packages, the scripts and configs beside them, the README, the docs, the tests.
SOURCES = ["omnimae", "loaders", "benchmarks", "configs", "scripts", "docs", "tests"]
SUFFIXES = {".py", ".md", ".yaml", ".yml", ".sh", ".sbatch", ".toml", ".txt"}
DOCS_PATH = re.compile(r"(?<![\w/.-])docs/[\w./-]*[\w]")  # `docs/design.md#layout` -> docs/design.md
MD_LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")  # [text](target#anchor)
# Developer notes kept outside the repository: a user following such a reference finds nothing.
OUTSIDE_NOTES = re.compile(r"\b(?:DESIGN|STYLE)\.md\b|/work/shared\b|\bshared/(?:DESIGN|STYLE|reference)")


def project_files() -> list[Path]:
    files = [REPO / "README.md", REPO / "pyproject.toml"]
    for folder in SOURCES:
        files += sorted(p for p in (REPO / folder).rglob("*")
                        if p.is_file() and p.suffix in SUFFIXES and "__pycache__" not in p.parts)
    return [p for p in files if p.is_file()]


def docs_paths(text: str) -> set[str]:
    return {m.group(0).rstrip(".") for m in DOCS_PATH.finditer(text)}


def test_the_patterns_find_what_they_should():
    assert docs_paths("see docs/design.md, and `docs/design.md#layout`.") == {"docs/design.md"}
    assert docs_paths("[x](docs/design.md) (docs/README.md)") == {"docs/design.md", "docs/README.md"}
    assert docs_paths("mydocs/x.md or a/docs/y.md") == set()
    assert OUTSIDE_NOTES.search("(DESIGN.md's table)") and OUTSIDE_NOTES.search("see STYLE.md")
    assert not OUTSIDE_NOTES.search("docs/design.md") and not OUTSIDE_NOTES.search("shared memory")


def test_design_notes_exist_and_are_referenced():
    assert (REPO / "docs" / "design.md").is_file()
    assert "docs/design.md" in (REPO / "README.md").read_text()
    assert "docs/design.md" in (REPO / "omnimae" / "config.py").read_text()  # --help-config points there


def test_every_docs_path_named_in_the_project_exists():
    missing = sorted(f"{p.relative_to(REPO)}: {ref}" for p in project_files()
                     for ref in docs_paths(p.read_text(errors="replace"))
                     if p.name != "test_docs.py" and not (REPO / ref).exists())
    assert not missing, "references to docs that do not exist:\n" + "\n".join(missing)


@pytest.mark.parametrize("doc", sorted((REPO / "docs").glob("*.md")) + [REPO / "README.md"],
                         ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_in_the_docs_resolve(doc):
    broken = [target for target in MD_LINK.findall(doc.read_text())
              if "://" not in target and not target.startswith("mailto:")
              and not (doc.parent / target).exists()]
    assert not broken, f"{doc.relative_to(REPO)}: broken links {broken}"


def test_nothing_refers_to_notes_outside_the_repository():
    hits = sorted(f"{p.relative_to(REPO)}:{n}: {line.strip()}"
                  for p in project_files() if p.name != "test_docs.py"
                  for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1)
                  if OUTSIDE_NOTES.search(line))
    assert not hits, "references to developer notes users do not have (use docs/):\n" + "\n".join(hits)


REPO_PATH = re.compile(r"(?<![\w/.-])(?:omnimae|loaders|benchmarks|configs|scripts|tests|docs)/[\w./*-]*")


@pytest.mark.parametrize("doc", sorted((REPO / "docs").glob("*.md")), ids=lambda p: p.name)
def test_every_repository_path_in_the_docs_exists(doc):
    """The layout and the recipe tables name files; a file that moved must be renamed there too."""
    paths = {m.group(0).rstrip(".,:;") for m in REPO_PATH.finditer(doc.read_text())}
    missing = sorted(p for p in paths if not list(REPO.glob(p.rstrip("/"))))
    assert not missing, f"{doc.relative_to(REPO)} names paths that do not exist: {missing}"
