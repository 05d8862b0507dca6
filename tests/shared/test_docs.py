"""Checks on the documentation: the README stays short, every relative link and figure resolves, and the README's
example runs as written."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PAGES = sorted([ROOT / "README.md", ROOT / "CONTRIBUTING.md", *DOCS.glob("*.md")])
TECHNIQUE_PAGES = ("warp", "heads", "drift", "lora_null", "selective")
REQUIRED_PAGES = (*TECHNIQUE_PAGES, "tracking", "recipes", "launching", "cli", "troubleshooting", "architecture")
EXAMPLE_MARKER = "<!-- readme-example:"

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
LINK = re.compile(r"(!?)\[((?:[^\[\]]|\[[^\]]*\])*)\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$", re.M)
HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$", re.M)
EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:, ...


def _prose(text: str) -> str:
    """``text`` without fenced code blocks and inline code spans (links there are not links)."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: markup dropped, lower case, punctuation removed, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading anchor of a Markdown page, duplicates numbered as GitHub does (``x``, ``x-1``, ...)."""
    seen: dict[str, int] = {}
    result = set()
    for match in HEADING.finditer(FENCE.sub("", page.read_text())):
        slug = github_slug(match.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def links(page: Path) -> list[tuple[bool, str]]:
    """``(is_image, target)`` for every inline and reference link of a page's prose."""
    prose = _prose(page.read_text())
    found = [(bang == "!", target) for bang, _, target in LINK.findall(prose)]
    return found + [(False, target) for target in REFERENCE.findall(prose)]


def test_github_slug():
    assert github_slug("A silent bug of the stack that `HfExtTrainer` fixes") == (
        "a-silent-bug-of-the-stack-that-hfexttrainer-fixes"
    )
    assert github_slug("Measured: embedded MiniLM on `builtin:topic`, 3 seeds") == (
        "measured-embedded-minilm-on-builtintopic-3-seeds"
    )
    assert github_slug("Memory and time (`benchmarks/selective.py`, 2 CPU cores)") == (
        "memory-and-time-benchmarksselectivepy-2-cpu-cores"
    )


def test_link_parser_skips_code_and_finds_links():
    text = "see [a](x.md#b) and ![f](f.png)\n`[not](a.md)`\n```\n[nor](b.md)\n```\n[r]: ref.md\n"
    prose = _prose(text)
    assert [(bang == "!", target) for bang, _, target in LINK.findall(prose)] == [(False, "x.md#b"), (True, "f.png")]
    assert REFERENCE.findall(prose) == ["ref.md"]


def test_readme_is_under_250_lines():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) < 250, f"README.md has {len(lines)} lines; move detail to docs/"


def test_documentation_pages_exist():
    missing = [name for name in REQUIRED_PAGES if not (DOCS / f"{name}.md").is_file()]
    assert missing == [] and (ROOT / "CONTRIBUTING.md").is_file()


def test_readme_links_every_technique_page_and_the_guides():
    targets = {target.split("#")[0] for _, target in links(ROOT / "README.md")}
    expected = {f"docs/{name}.md" for name in REQUIRED_PAGES} | {"CONTRIBUTING.md", "benchmarks/RESULTS.md"}
    assert expected - targets == set()


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    """Every relative link names an existing file (or folder), and an existing heading where it has ``#anchor``."""
    broken = []
    for _, target in links(page):
        if EXTERNAL.match(target):
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{target}: {resolved} does not exist")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: no heading with anchor #{anchor} in {resolved.relative_to(ROOT)}")
    assert broken == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_figures_exist_or_are_run_outputs(page):
    """An image a page shows is a file of the repository; a figure it names in code (``drift.png``) is either a
    file of the repository or a run output: a bare name or a ``runs/`` path that hf_ext's code writes."""
    source = "\n".join(path.read_text() for path in (ROOT / "hf_ext").rglob("*.py"))
    problems = []
    for is_image, target in links(page):
        if is_image and not EXTERNAL.match(target) and not (page.parent / target).is_file():
            problems.append(f"image {target} does not exist")
    for name in re.findall(r"`([^`\s]+\.(?:png|jpg|jpeg|svg|gif|pdf))`", FENCE.sub("", page.read_text())):
        if (page.parent / name).is_file() or (ROOT / name).is_file():
            continue
        run_output = ("/" not in name or name.startswith("runs/")) and Path(name).name in source
        if not run_output:
            problems.append(f"`{name}` is neither a file of the repository nor a figure hf_ext writes")
    assert problems == []


def test_every_figure_in_docs_is_shown_somewhere():
    """No figure was lost in a move: each image in docs/ is shown by a page."""
    shown = {(page.parent / target).resolve() for page in PAGES for is_image, target in links(page) if is_image}
    figures = [p for p in DOCS.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".svg", ".gif")]
    assert figures and [p.name for p in figures if p.resolve() not in shown] == []


def readme_example() -> str:
    """The Python block after the example marker in README.md, read from the README itself."""
    text = (ROOT / "README.md").read_text()
    assert text.count(EXAMPLE_MARKER) == 1, "README.md needs exactly one example marker"
    section = text.split("## A 30-line example", 1)[1].split("\n## ", 1)[0]
    assert section.count("```python") == 1, "the example section holds exactly one python block"
    after = text.split(EXAMPLE_MARKER, 1)[1]
    match = re.match(r"[^\n]*\n```python\n(.*?)\n```", after, re.S)
    assert match, "the example marker is followed directly by a ```python block"
    return match.group(1) + "\n"


def test_readme_example_is_about_30_lines_on_the_public_api():
    code = readme_example()
    assert len(code.splitlines()) <= 40
    imports = re.findall(r"^\s*(?:from\s+(\S+)\s+import|import\s+(\S+))", code, re.M)
    assert {module or name for module, name in imports} == {"hf_ext"}


def test_readme_example_runs(tmp_path):
    """The README example, as written there, runs offline in a fresh process and prints its results."""
    script = tmp_path / "readme_example.py"
    script.write_text(readme_example())
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    }
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    assert "validation accuracy" in result.stdout and "head importance by layer" in result.stdout
    assert list((tmp_path / "runs" / "readme_example").rglob("events.out.tfevents.*"))  # TensorBoard events
