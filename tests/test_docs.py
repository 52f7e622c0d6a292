"""The documentation: the site builds without a warning, documents every public name, and is
self-contained (no links outside the repository, none broken).

``mkdocs build --strict`` turns every warning (a broken link, a docstring that mkdocstrings'
numpy parser cannot read, a page missing from the navigation) into a failure.
"""
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: the modules whose ``__all__`` the API reference must cover, and the page that documents them
API_PAGES = {
    "simtorch_semantic": None,                         # top level: documented on any API page
    "simtorch_semantic.functional": "functional",
    "simtorch_semantic.functional.inference": "functional",
    "simtorch_semantic.measures": "measures",
    "simtorch_semantic.results": "results",
    "simtorch_semantic.plotting": "plotting",
    "simtorch_semantic.overlay": "overlay",
    "simtorch_semantic.distributed": "distributed",
    **{f"simtorch_semantic.functional.{m}": "catalogue"
       for m in ("registry", "protocol", "spatial", "alignment", "neighbors", "rsm_measures", "statistics", "topology",
                 "outputs")},
}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    pytest.importorskip("mkdocs", reason="mkdocs is not installed (pip install -e '.[docs]')")
    pytest.importorskip("material", reason="mkdocs-material is not installed (pip install -e '.[docs]')")
    pytest.importorskip("mkdocstrings", reason="mkdocstrings is not installed (pip install -e '.[docs]')")
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out),
         "--config-file", str(REPO / "mkdocs.yml")],
        cwd=REPO, capture_output=True, text=True, timeout=600,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    assert "WARNING" not in proc.stderr, proc.stderr
    return out


def test_strict_build_succeeds(site):
    assert (site / "index.html").is_file()
    for page in ("getting-started", "concepts", "troubleshooting", "migration"):
        assert (site / page / "index.html").is_file(), page


def _ids(html: str) -> set:
    return set(re.findall(r'id="(simtorch_semantic[\w.]*)"', html))


def test_api_reference_documents_every_public_name(site):
    pages = {p: (site / "api" / p / "index.html").read_text(encoding="utf-8")
             for p in ("package", "functional", "catalogue", "measures", "results", "plotting",
                       "overlay", "distributed")}
    every_id = set().union(*(_ids(h) for h in pages.values()))
    missing = []
    for module, page in API_PAGES.items():
        ids = every_id if page is None else _ids(pages[page])
        for name in importlib.import_module(module).__all__:
            if not any(i == f"{module}.{name}" or (i.startswith(module) and i.endswith("." + name))
                       for i in ids):
                missing.append(f"{module}.{name}")
    assert not missing, f"public names without an API entry: {missing}"


def test_mkdocs_config_lists_every_page():
    pytest.importorskip("yaml", reason="PyYAML is not installed")
    import yaml

    class _Loader(yaml.SafeLoader):
        pass

    # mkdocs.yml may hold python tags (!!python/name:...); read them as plain strings
    _Loader.add_multi_constructor("tag:yaml.org,2002:python/", lambda loader, suffix, node: None)
    config = yaml.load((REPO / "mkdocs.yml").read_text(encoding="utf-8"), Loader=_Loader)

    def walk(nav):
        for item in nav:
            value = next(iter(item.values())) if isinstance(item, dict) else item
            if isinstance(value, list):
                yield from walk(value)
            else:
                yield value

    listed = set(walk(config["nav"]))
    on_disk = {str(p.relative_to(REPO / "docs")) for p in (REPO / "docs").rglob("*.md")}
    assert on_disk <= listed, f"pages missing from mkdocs.yml's nav: {sorted(on_disk - listed)}"
    assert listed <= on_disk, f"nav entries without a page: {sorted(listed - on_disk)}"


def test_readme_and_package_metadata_point_to_the_docs():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "(docs/index.md)" in readme
    setup_py = (REPO / "setup.py").read_text(encoding="utf-8")
    assert '"Documentation": "docs/index.md"' in setup_py
    assert (REPO / "docs" / "index.md").is_file()


# --- self-contained documentation (no links outside the repository, none broken)
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
