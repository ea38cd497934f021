"""Offline documentation build for machines without Quarto.

nbdev's own processors turn nbs/*.ipynb into _proc/*.ipynb (directives removed, `show_doc` signatures rendered
from the exported code), exactly as `nbdev_docs` does before handing them to Quarto. Here nbconvert renders each
processed notebook, with the outputs saved in it (tables, plots), to _docs/<name>.html, and an index page lists
them. The Kaggle notebooks (kaggle/*.ipynb, outside nbs/ so nbdev_test never runs them) and kaggle/README.md are
rendered the same way into _docs/kaggle/, under a "Kaggle" heading of the index. Where Quarto exists, `make docs`
runs `nbdev_docs` instead, using nbs/_quarto.yml (whose pre-render script, tools/kaggle_pages.py, adds them there).
"""
import html, json, re, shutil, subprocess, sys
from pathlib import Path

root = Path(__file__).resolve().parents[1]

def main():
    bin_ = Path(sys.executable).parent
    import os; os.chdir(root)
    # nbdev_proc_nbs would first try to install Quarto (and pip-install the project into whatever `pip` is on PATH);
    # the steps after that are called directly.
    import nbdev.doclinks
    from nbdev.quarto import nbdev_sidebar
    from nbdev.serve import proc_nbs
    nbdev.doclinks._build_modidx()
    nbdev_sidebar.__wrapped__(path=root / "nbs")
    proc_nbs(root / "nbs", n_workers=1, force=True)
    proc, docs = root / "_proc", root / "_docs"
    if docs.exists(): shutil.rmtree(docs)
    docs.mkdir()
    
    from nbconvert import HTMLExporter
    from nbconvert.preprocessors import Preprocessor
    import nbformat
    
    class DropMeta(Preprocessor):
        "Skip Quarto front matter cells (raw '---' blocks) that nbdev adds."
        def preprocess(self, nb, resources):
            nb.cells = [c for c in nb.cells if not (c.cell_type == "raw" and c.source.strip().startswith("---"))]
            for c in nb.cells:
                if c.cell_type != "code": continue
                lines = c.source.splitlines()
                if any(l.replace(" ", "") == "#|echo:false" for l in lines):  # Quarto's echo: false
                    c.metadata["transient"] = {"remove_source": True}
                c.source = "\n".join(l for l in lines if not l.startswith("#|")).strip()
                for o in c.get("outputs", []):  # Quarto link attributes nbconvert does not understand
                    for k, v in o.get("data", {}).items():
                        if isinstance(v, str): o["data"][k] = re.sub(r'\{target="_blank"[^}]*\}', "", v)
            return nb, resources
    
    exporter = HTMLExporter(template_name="lab", exclude_input_prompt=True, exclude_output_prompt=True)
    exporter.register_preprocessor(DropMeta, enabled=True)
    pages = []
    for p in sorted(proc.rglob("*.ipynb")):
        nb = nbformat.read(p, as_version=4)
        title = next((c.source.splitlines()[0].lstrip("# ").strip() for c in nb.cells if c.cell_type == "markdown" and c.source.strip()), p.stem)
        for c in nb.cells:  # Quarto front matter carries the title/description: show them as a heading
            if c.cell_type == "raw" and c.source.strip().startswith("---"):
                meta = dict(re.findall(r"^(\w+):\s*(.*)$", c.source, flags=re.M))
                title = meta.get("title", title).strip("'\"")
                desc = meta.get("description", "").strip("'\"")
                nb.cells.insert(0, nbformat.v4.new_markdown_cell(f"# {title}\n\n*{desc}*" if desc else f"# {title}"))
                break
        body, _ = exporter.from_notebook_node(nb)
        name = "index" if p.stem == "index" else p.stem
        (docs / f"{name}.html").write_text(body, encoding="utf-8")
        pages.append((name, title))
    
    # The Kaggle notebooks: no nbdev processing (no directives, no exports), the same exporter.
    from kaggle_pages import kaggle_notebooks, readme_markdown, TITLE
    kaggle, knbs = [], kaggle_notebooks()
    if knbs: (docs / "kaggle").mkdir()
    if knbs and (root / "kaggle" / "README.md").exists():
        readme = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(readme_markdown(link_suffix=".html"))])
        (docs / "kaggle" / "index.html").write_text(exporter.from_notebook_node(readme)[0], encoding="utf-8")
        kaggle.append(("kaggle/index", TITLE))
    for p in knbs:
        nb = nbformat.read(p, as_version=4)
        title = next((c.source.splitlines()[0].lstrip("# ").strip() for c in nb.cells if c.cell_type == "markdown" and c.source.strip()), p.stem)
        (docs / "kaggle" / f"{p.stem}.html").write_text(exporter.from_notebook_node(nb)[0], encoding="utf-8")
        kaggle.append((f"kaggle/{p.stem}", title))

    nav = "\n".join(f'<li><a href="{n}.html">{html.escape(t)}</a></li>' for n, t in pages if n != "index")
    knav = "\n".join(f'<li><a href="{n}.html">{html.escape(t)}</a></li>' for n, t in kaggle)
    toc = f"""<!doctype html><meta charset="utf-8"><title>Safety Compass documentation</title>
    <style>body{{font-family:system-ui,sans-serif;max-width:50rem;margin:2rem auto;line-height:1.5}}</style>
    <h1>Safety Compass</h1><p><a href="index.html">Overview (README)</a></p><h2>Chapters</h2><ol>{nav}</ol>""" + \
        (f"<h2>Kaggle</h2><ul>{knav}</ul>" if kaggle else "")
    (docs / "contents.html").write_text(toc, encoding="utf-8")
    print(f"wrote {len(pages) + len(kaggle)} pages ({len(kaggle)} Kaggle) to {docs} (open {docs / 'contents.html'})")

if __name__ == "__main__":  # proc_nbs spawns workers that re-import this file
    main()
