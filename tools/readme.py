"""Write README.md from nbs/index.ipynb (nbdev's own `nbdev_readme` needs Quarto, which is not available everywhere)."""
import json, re, sys
from pathlib import Path

root = Path(__file__).resolve().parents[1]
nb = json.loads((root / "nbs/index.ipynb").read_text())
out = []
for cell in nb["cells"]:
    src = "".join(cell["source"]).strip()
    if cell["cell_type"] == "markdown":
        src = re.sub(r"^> (.*)$", r"*\1*", src, flags=re.M)
        # chapter links point at the docs site's pages; in the README they point at the notebooks themselves
        src = re.sub(r"\]\((\d+[a-zA-Z0-9]*_\w+)\.html\)", r"](nbs/\1.ipynb)", src)
        # other files are linked from the notebook's folder (`../benchmarks/README.md`, `../nbs/images/...`, which also
        # resolve from the built site in _docs/); in the README they are relative to the repository root
        src = re.sub(r"\]\(\.\./", "](", src)
        out.append(src)
    elif cell["cell_type"] == "code":
        src = "\n".join(l for l in src.splitlines() if not l.startswith("#|"))
        if src: out.append(f"```python\n{src}\n```")
text = "\n\n".join(out) + "\n"
if "--check" in sys.argv:
    sys.exit(0 if (root / "README.md").read_text() == text else "README.md is out of date: run python tools/readme.py")
(root / "README.md").write_text(text)
