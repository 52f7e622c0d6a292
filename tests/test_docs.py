"""The documentation in the repository is self-contained: no links outside it, none broken."""
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAGES = sorted((REPO / "docs").glob("*.md")) + [REPO / "README.md"]


def test_architecture_page_exists_and_readme_points_at_it():
    assert (REPO / "docs" / "architecture.md").is_file()
    readme = " ".join((REPO / "README.md").read_text(encoding="utf-8").split())
    assert "the architecture is in `docs/architecture.md`" in readme
    assert not (REPO / "docs" / "internals.md").exists()


def test_docs_never_point_outside_the_repository():
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        assert "../shared" not in text and "shared/DESIGN" not in text, page.name
        assert "internals.md" not in text, page.name


def test_relative_links_and_paths_resolve():
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)#\s]+)", text):          # markdown links
            if "://" not in target:
                assert (page.parent / target).exists(), f"{page.name}: broken link {target}"
        for path in re.findall(r"`((?:docs|benchmarks|notebooks|tests|simtorch_semantic)/[\w./-]+)`",
                               text):                                # repository paths in code spans
            assert (REPO / path).exists(), f"{page.name}: {path} does not exist"
