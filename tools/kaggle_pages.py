"""The Kaggle notebooks (kaggle/*.ipynb, kaggle/README.md) as documentation pages.

They live outside nbs/ so that nbdev_test never executes them with their full-scale (Qwen3-8B, GPU) parameters.
`tools/build_docs.py` renders them with nbconvert; for Quarto (`nbdev_docs`), nbs/_quarto.yml runs this file as a
pre-render script in nbdev's _proc/ copy of nbs/ (Quarto >= 1.5 re-reads the project after pre-render scripts): it
copies the notebooks and the README into _proc/kaggle/ and adds a "Kaggle" section to the sidebar. Standard library
only, since Quarto runs it with whatever python is on PATH.
"""
import os, re, shutil, sys
from pathlib import Path

root = Path(__file__).resolve().parents[1]
ORDER = ["alpaca", "dolly", "code_alpaca", "behavior", "analysis"]  # the order a user runs them in
TITLE = "Kaggle notebooks"

def kaggle_notebooks(base=root) -> list[Path]:
    "kaggle/*.ipynb in run order (unknown names last, sorted)."
    nbs = {p.stem: p for p in (Path(base) / "kaggle").glob("*.ipynb")}
    return [nbs[n] for n in ORDER if n in nbs] + [nbs[n] for n in sorted(nbs) if n not in ORDER]

def readme_markdown(base=root, link_suffix=".ipynb") -> str:
    "kaggle/README.md, with links to the notebooks pointing at `<name><link_suffix>`."
    text = (Path(base) / "kaggle" / "README.md").read_text(encoding="utf-8")
    return re.sub(r"\]\((\w+)\.ipynb\)", lambda m: f"]({m.group(1)}{link_suffix})", text)

def sidebar_section(sidebar_text: str, entries: list[str]) -> str:
    "Append a 'Kaggle' section to an nbdev sidebar.yml (website.sidebar.contents), once."
    if re.search(r"^\s*-\s*section:\s*Kaggle\s*$", sidebar_text, flags=re.M): return sidebar_text
    items = re.findall(r"^(\s*)- ", sidebar_text, flags=re.M)
    indent = items[0] if items else "      "
    lines = [f"{indent}- section: Kaggle", f"{indent}  contents:"] + [f"{indent}    - {e}" for e in entries]
    return sidebar_text.rstrip("\n") + "\n" + "\n".join(lines) + "\n"

def prerender(project: Path):
    "Copy the Kaggle pages into the Quarto project `project` (nbdev's _proc/) and list them in its sidebar."
    dest = project / "kaggle"
    dest.mkdir(exist_ok=True)
    for p in kaggle_notebooks(): shutil.copy2(p, dest / p.name)
    (dest / "index.md").write_text(f"---\ntitle: {TITLE}\n---\n\n" + re.sub(r"\A# [^\n]*\n", "", readme_markdown()),
                                   encoding="utf-8")
    sidebar = project / "sidebar.yml"
    if sidebar.exists():
        entries = ["kaggle/index.md"] + [f"kaggle/{p.name}" for p in kaggle_notebooks()]
        sidebar.write_text(sidebar_section(sidebar.read_text(encoding="utf-8"), entries), encoding="utf-8")

if __name__ == "__main__":
    project = Path(os.environ.get("QUARTO_PROJECT_DIR") or os.getcwd()).resolve()
    if project.name != "_proc":  # e.g. `quarto preview nbs`: never write notebooks into nbs/, where nbdev_test would run them
        print(f"kaggle_pages: {project} is not nbdev's _proc/ copy; Kaggle pages not added", file=sys.stderr)
    else:
        prerender(project)
