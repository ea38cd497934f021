"""Offline documentation build for machines without Quarto.

    python tools/build_docs.py             # writes _proc/ and _docs/ only (open _docs/contents.html)
    python tools/build_docs.py --sidebar   # rewrites nbs/sidebar.yml from nbs/*.ipynb; commit the result

nbdev's own processors turn nbs/*.ipynb into _proc/*.ipynb (front matter, directives removed, a `show_doc` cell
after every exported definition, rendered from the exported code), as `nbdev_docs` does before handing them to
Quarto. nbconvert then renders each processed notebook, with the outputs saved in it (tables, figures), to
_docs/<name>.html, with the page's title and whole subtitle from the front matter (read as YAML), previous / contents /
next links at its top and bottom, and links between pages made local. The Kaggle notebooks (kaggle/*.ipynb, outside
nbs/ so nbdev_test never runs them) and kaggle/README.md follow the chapters, in _docs/kaggle/. Where Quarto exists,
nbs/_quarto.yml builds the same pages (its pre-render script, tools/kaggle_pages.py, adds the Kaggle pages).

Nothing outside _proc/ and _docs/ is written: the page order is the file order of nbs/*.ipynb (index first), and
the committed nbs/sidebar.yml is only read (an entry whose notebook is missing is skipped with a warning).

Where this differs from nbdev 2.4's own processing, on purpose:
- nbdev runs every cell that contains an import, the whole cell, to prepare `show_doc`; a test cell that also
  imports something then fails for want of the notebook's earlier cells. Here only the import statements of such a
  cell run (cells of imports alone, exported cells and `show_doc` cells run whole, as in nbdev).
- `show_doc` cells follow their definitions in source order (nbdev inserts them in reverse).
- fastcore's docments gives a parameter without an annotation the type of its default, so `log_file=None` is shown
  as `log_file:NoneType=None`; here such a parameter is shown without a type, as written.
- nbdev links every backticked name in its index to `page.html#name`, documented there or not; a link whose anchor
  the target page lacks (a method or private helper without `show_doc`) is shown as plain text.
- Progress bars (tqdm) in stored stream outputs are dropped with a warning naming the notebook: re-execute it with
  progress bars off (`transformers.utils.logging.disable_progress_bar()`, `progress=False`).
"""
from __future__ import annotations
import argparse, ast, html, os, re, shutil, sys
from pathlib import Path

import yaml

root = Path(__file__).resolve().parents[1]
NBS, PROC, DOCS = root / "nbs", root / "_proc", root / "_docs"
sys.path.insert(0, str(root / "tools"))   # kaggle_pages
sys.path.insert(0, str(root))             # this checkout's safety_compass, whatever else is installed

def warn(msg: str):
    print(f"warning: {msg}", file=sys.stderr, flush=True)

# -- page order and the sidebar ------------------------------------------------------------------------------------

def notebook_names(nbs: Path = NBS) -> list[str]:
    "The notebooks of `nbs` in page order: index.ipynb first, then by file name (00_core.ipynb, 01_config.ipynb, ...)."
    names = [p.name for p in nbs.glob("*.ipynb") if not p.name.startswith(("_", "."))]
    return sorted(names, key=lambda n: (n != "index.ipynb", n))

def module_notebooks(nbs: Path = NBS) -> dict[str, list[str]]:
    """`{folder: ["folder/name.ipynb", ...]}`, the notebooks in sub-folders of `nbs`. They are not chapters: each only
    starts one module of a package whose code a chapter appends to it (nbdev's `#| export diff.lens` appends to a module
    that exists; see nbs/diff/). nbdev's sidebar lists them, a section per folder, so the committed sidebar does too;
    the docs build makes no page of them."""
    out = {}
    for d in sorted(p for p in nbs.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))):
        names = sorted(f"{d.name}/{p.name}" for p in d.glob("*.ipynb") if not p.name.startswith(("_", ".")))
        if names: out[d.name] = names
    return out

def sidebar_text(names: list[str], sections: dict | None = None) -> str:
    """nbs/sidebar.yml listing `names`, then a section per folder of `sections` (`module_notebooks`), laid out exactly
    as `nbdev_sidebar` writes it."""
    from nbdev.quarto import IndentDumper
    contents = list(names) + [{"section": k, "contents": v} for k, v in (sections or {}).items()]
    return yaml.dump({"website": {"sidebar": {"contents": contents}}}, Dumper=IndentDumper, sort_keys=False)

def sidebar_entries(path: Path = NBS / "sidebar.yml") -> list[str]:
    "The file entries of a Quarto sidebar.yml (`website.sidebar.contents`, sections flattened), in order."
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    out = []
    def walk(items):
        for it in items or []:
            if isinstance(it, str): out.append(it)
            elif isinstance(it, dict):
                if isinstance(it.get("href"), str): out.append(it["href"])
                walk(it.get("contents"))
    walk(((data.get("website") or {}).get("sidebar") or {}).get("contents"))
    return out

def check_sidebar(nbs: Path = NBS) -> tuple[list[str], list[str]]:
    "`(entries whose notebook is missing, notebooks the sidebar lacks)` for nbs/sidebar.yml."
    present = notebook_names(nbs) + [n for names in module_notebooks(nbs).values() for n in names]
    listed = [e for e in sidebar_entries(nbs / "sidebar.yml") if e.endswith(".ipynb")]
    return [e for e in listed if e not in present], [n for n in present if n not in listed]

def proc_sidebar(nbs: Path, dest: Path):
    "The committed sidebar without entries whose notebook is missing (each skipped with a warning), for Quarto in _proc/."
    missing, unlisted = check_sidebar(nbs)
    for e in missing: warn(f"nbs/sidebar.yml lists {e}, which is not in nbs/: skipped")
    for n in unlisted: warn(f"nbs/sidebar.yml does not list {n}: it is built at its file position; run "
                            f"`python tools/build_docs.py --sidebar` and commit nbs/sidebar.yml")
    listed = [e for e in sidebar_entries(nbs / "sidebar.yml") if e not in missing]
    entries = [n for n in notebook_names(nbs) if n in listed or n in unlisted]
    dest.write_text(sidebar_text(entries + [e for e in listed if not e.endswith(".ipynb")]), encoding="utf-8")

# -- nbdev processing ------------------------------------------------------------------------------------------------

def _import_source(cell) -> str | None:
    "The code this build runs from `cell` to prepare `show_doc` (see the module docstring), or None."
    from nbdev.processors import cell_lang, _show_docs
    if cell.cell_type != "code" or cell_lang(cell) != "python" or not cell.source or "nbdev_export" + "()" in cell.source: return None
    if cell.directives_.get("eval:", [""])[0].lower() == "false": return None
    if cell.directives_.keys() & {"export", "exports", "exporti", "exec_doc"}: return cell.source
    try: trees = ast.parse(cell.source).body
    except SyntaxError: return None
    if _show_docs(trees): return cell.source
    imports = [t for t in trees if isinstance(t, (ast.Import, ast.ImportFrom))]
    if not imports: return None
    if len(imports) == len(trees): return cell.source
    return "\n".join(ast.get_source_segment(cell.source, t) for t in imports)

def doc_processors():
    "nbdev's processor list for docs, with the three changes of the module docstring."
    from fastcore.xtras import str2bool
    from nbdev.processors import FilterDefaults, add_show_docs, exec_show_docs

    class add_show_docs_in_order(add_show_docs):
        "nbdev's `add_show_docs`, with each definition's `show_doc` cells in source order."
        def begin(self):
            super().begin()
            cells, run, out = self.nb.cells, [], []
            for c in cells + [None]:
                if c is not None and c.get("has_sd"): run.append(c); continue
                out += run[::-1]; run = []
                if c is not None: out.append(c)
            self.nb.cells[:] = out

    class exec_imports_and_show_docs(exec_show_docs):
        "nbdev's `exec_show_docs`, running only the imports of a cell that mixes imports with other code."
        def __call__(self, cell):
            if not self.nb.has_docs_ or not hasattr(self, "k"): return
            if str2bool(getattr(self.nb, "frontmatter_", {}).get("skip_showdoc", False)): return
            src = _import_source(cell)
            if src is None: return
            if src == cell.source: self.k.cell(cell)
            else: self.k.run(src)
            if self.k.exc:
                raise RuntimeError(f"{Path(self.nb.path_).name}: cell {cell.idx_} failed while preparing show_doc "
                                   f"({type(self.k.exc).__name__}: {self.k.exc}):\n{src}") from self.k.exc

    swap = {add_show_docs: add_show_docs_in_order, exec_show_docs: exec_imports_and_show_docs}
    return [swap.get(p, p) for p in FilterDefaults().procs()]

def _no_nonetype_annotations():
    "Show a parameter without annotation as written (`x=None`), not with its default's type (`x:NoneType=None`)."
    import inspect
    import fastcore.docments as dm
    if getattr(dm._get_full, "_safety_compass", False): return
    orig = dm._get_full
    def _get_full(p, docs, eval_str=False):
        res = orig(p, docs, eval_str)
        if p.annotation is inspect.Parameter.empty and p.default is None: res["anno"] = inspect.Parameter.empty
        return res
    _get_full._safety_compass = True
    dm._get_full = _get_full

def _phase(items, desc: str):
    "`items` with one progress bar per phase on a terminal (the package's one rule, `core.progress_enabled`)."
    from tqdm.auto import tqdm
    from safety_compass.core import progress_enabled
    return tqdm(items, desc=desc, unit="nb", disable=not progress_enabled(), leave=False)

def process_notebooks(names: list[str], nbs: Path = NBS, proc: Path = PROC):
    "nbs/ -> _proc/: every notebook through nbdev's processors, and the Quarto project files."
    from execnb.nbio import read_nb, write_nb
    from nbdev.process import NBProcessor
    if proc.exists(): shutil.rmtree(proc)
    proc.mkdir()
    for f in ("_quarto.yml", "nbdev.yml", "styles.css"):
        if (nbs / f).exists(): shutil.copy2(nbs / f, proc / f)
    proc_sidebar(nbs, proc / "sidebar.yml")
    _no_nonetype_annotations()
    old = os.environ.get("IN_TEST")
    os.environ["IN_TEST"] = "1"   # as nbdev's own processing does
    try:
        for n in _phase(names, "docs: process notebooks"):
            nb = read_nb(nbs / n)
            NBProcessor(nb=nb, procs=doc_processors()).process()
            for c in nb.cells: c.pop("has_sd", None); c.pop("directives_", None)
            write_nb(nb, proc / n)
    finally:
        if old is None: os.environ.pop("IN_TEST", None)
        else: os.environ["IN_TEST"] = old

# -- rendering -------------------------------------------------------------------------------------------------------

_BAR = re.compile(r"\d+%\||\d ?[A-Za-z]+/s\]|\bs/it\]|\[\d+:\d+<")   # tqdm: "45%|###", "[00:01<00:02, 9.1it/s]"

def clean_stream(text: str) -> tuple[str, int]:
    "Terminal-style stream text: each line as its last carriage return leaves it, progress-bar lines dropped."
    kept, dropped = [], 0
    for line in text.split("\n"):
        line = line.rstrip("\r").rsplit("\r", 1)[-1]
        if _BAR.search(line): dropped += 1
        else: kept.append(line)
    return "\n".join(kept), dropped

def _directives(src: str) -> tuple[dict, str]:
    "Quarto/nbdev `#| key: value` lines of a code cell as a dict, and the source without them."
    d, body = {}, []
    for line in src.splitlines():
        m = re.match(r"\s*#\|\s*([\w-]+)\s*:?\s*(.*)$", line)
        if m: d[m.group(1)] = m.group(2).strip().lower()
        else: body.append(line)
    return d, "\n".join(body).strip()

def _exporter(page: str):
    "An nbconvert HTML exporter that applies the cell directives and cleans outputs; `page` names warnings."
    from nbconvert import HTMLExporter
    from nbconvert.preprocessors import Preprocessor

    class Page(Preprocessor):
        def preprocess(self, nb, resources):
            cells, bars = [], 0
            for c in nb.cells:
                if "source" not in c: continue   # nbdev's hide_ and rm_export delete it
                if c.cell_type == "raw" and c.source.lstrip().startswith("---"): continue   # front matter: the page header
                if c.cell_type == "code":
                    d, c.source = _directives(c.source)
                    if d.get("include") == "false": continue
                    if d.get("output") == "false": c.outputs = []
                    outs = []
                    for o in c.get("outputs", []):
                        if o.get("output_type") == "stream":
                            text, n = clean_stream("".join(o["text"]) if isinstance(o["text"], list) else o["text"])
                            bars += n
                            if not text.strip(): continue
                            o["text"] = text
                        for k, v in o.get("data", {}).items():   # Quarto link attributes nbconvert does not know
                            if k == "text/markdown":
                                o["data"][k] = re.sub(r'\{target="_blank"[^}]*\}', "", "".join(v) if isinstance(v, list) else v)
                        outs.append(o)
                    c.outputs = outs
                    if not c.source and not c.outputs: continue
                    if d.get("echo") == "false" or not c.source: c.metadata["transient"] = {"remove_source": True}
                cells.append(c)
            nb.cells = cells
            if bars: warn(f"{page}: dropped {bars} progress-bar line(s) from stored outputs; re-execute it with progress bars off")
            return nb, resources

    ex = HTMLExporter(template_name="lab", exclude_input_prompt=True, exclude_output_prompt=True)
    ex.register_preprocessor(Page, enabled=True)
    return ex

def front_matter(nb) -> dict:
    "The YAML front matter nbdev puts in a raw `---` cell (title, description, ...), parsed with yaml.safe_load."
    for c in nb.cells:
        src = c.source if isinstance(c.source, str) else "".join(c.source)
        if c.cell_type == "raw" and src.lstrip().startswith("---"):
            body = src.strip()[3:]
            body = body[:body.rfind("---")] if body.rstrip().endswith("---") else body
            data = yaml.safe_load(body)
            return data if isinstance(data, dict) else {}
    return {}

def _md_inline(text: str) -> str:
    "Markdown of one paragraph as inline HTML (code spans, emphasis, links)."
    from nbconvert.filters.markdown_mistune import markdown2html_mistune
    out = markdown2html_mistune(text).strip()
    return re.sub(r"^<p>(.*)</p>$", r"\1", out, flags=re.S)

def _first_heading(nb) -> str | None:
    for c in nb.cells:
        if c.cell_type == "markdown" and c.source.strip():
            line = c.source.strip().splitlines()[0]
            return line.lstrip("#").strip() if line.startswith("#") else None
    return None

class Site:
    "The pages in order, as (name relative to _docs/ without .html, title, description, source path)."
    def __init__(self, chapters: list[tuple], kaggle: list[tuple]):
        self.pages = chapters + kaggle
        self.names = [p[0] for p in self.pages]
        self.chapters = [p for p in chapters if p[0] != "index"]
        self.kaggle = kaggle
        self.titles = {p[0]: p[1] for p in self.pages}
        # nbdev's doc links and Quarto's page names drop the number prefix (digits, then letters or digits, as nbdev's
        # `_nbpath2html`): pairs.html is 03_pairs.html here, stats.html is 00b_stats.html
        self.alias = {re.sub(r"^\d+[a-zA-Z0-9]*_", "", p[0]): p[0] for p in chapters}

    def rel(self, frm: str, to: str) -> str:
        return os.path.relpath(to + ".html", os.path.dirname(frm + ".html") or ".").replace(os.sep, "/")

    def label(self, name: str) -> str:
        m = re.match(r"(\d+[a-zA-Z0-9]*)_", name.rsplit("/", 1)[-1])
        return f"{m.group(1)} · {self.titles[name]}" if m else self.titles[name]

    def nav(self, name: str, where: str) -> str:
        i = self.names.index(name)
        prev = self.names[i - 1] if i > 0 else None
        nxt = self.names[i + 1] if i + 1 < len(self.names) else None
        a = lambda n, cls, txt, rel: (f'<a class="{cls}" href="{self.rel(name, n)}" rel="{rel}">{txt}</a>' if n else
                                      f'<span class="{cls}"></span>')
        return (f'<nav class="sc-nav sc-nav-{where}" aria-label="pages">'
                + a(prev, "sc-prev", f"← {html.escape(self.label(prev))}" if prev else "", "prev")
                + f'<a class="sc-contents" href="{self.rel(name, "contents")}">Contents</a>'
                + a(nxt, "sc-next", f"{html.escape(self.label(nxt))} →" if nxt else "", "next") + "</nav>")

    def local_links(self, name: str, body: str, doc_prefix: str, src_prefix: str) -> str:
        "Links to the published site, to notebooks and to GitHub sources made relative links within _docs/."
        def page(stem, anchor):
            target = self.alias.get(stem) or (stem if stem in self.names else None)
            return f'href="{self.rel(name, target)}{anchor or ""}"' if target else None
        def doc(m): return page(m.group(1), m.group(2)) or m.group(0)
        # a backticked name in a docments comment: nbdev writes a Markdown link into the signature's code block
        body = re.sub(r'\[(`[^`\]]+`)\]\(' + re.escape(doc_prefix) + r'[^)\s]*\)', r"\1", body)
        body = re.sub(r'href="' + re.escape(doc_prefix) + r'([\w/-]+)\.html(#[^"]*)?"', doc, body)
        body = re.sub(r'href="([\w/-]+)\.(?:ipynb|html)(#[^"]*)?"', lambda m: page(m.group(1), m.group(2)) or m.group(0), body)
        up = os.path.relpath(root, (DOCS / name).parent).replace(os.sep, "/")
        return re.sub(r'href="' + re.escape(src_prefix) + r'([^"#]+)(#[^"]*)?"', lambda m: f'href="{up}/{m.group(1)}"', body)

def _anchor_aliases(body: str) -> str:
    "nbdev's doc links use lower-case anchors (#safetycompasscallback); nbconvert keeps the heading's case."
    def add(m):
        ident = html.unescape(m.group(2))
        low = ident.lower()
        return m.group(0) if low == ident else f'<a id="{html.escape(low)}"></a>{m.group(0)}'
    return re.sub(r'<h([1-6]) id="([^"]+)"', add, body)

def finish_page(site: Site, name: str, body: str, title: str, desc: str | None, css: str, header: bool,
                doc_prefix: str, src_prefix: str) -> str:
    "Title, subtitle and navigation around nbconvert's page body; links made local."
    if body.count("<main>") != 1 or body.count("</main>") != 1: raise RuntimeError(f"{name}: unexpected nbconvert page layout")
    head = ""
    if header:
        head = f'<header class="sc-header"><h1 class="sc-title" id="page-title">{html.escape(title)}</h1>'
        if desc: head += f'<p class="sc-subtitle">{_md_inline(desc)}</p>'
        head += "</header>"
    body = body.replace("<main>", f"<main>\n{site.nav(name, 'top')}\n{head}", 1)
    body = body.replace("</main>", f"{site.nav(name, 'bottom')}\n</main>", 1)
    body = re.sub(r"<title>.*?</title>", f"<title>{html.escape(title)} – Safety Compass</title>", body, count=1, flags=re.S)
    body = body.replace("</head>", f"<style>\n{css}\n</style>\n</head>", 1)
    return _anchor_aliases(site.local_links(name, body, doc_prefix, src_prefix))

def unlink_missing_anchors(pages: dict[str, str]) -> dict[str, str]:
    """`pages` (name -> HTML) with every link to an anchor its target page lacks replaced by the link's text. nbdev links
    each backticked name it knows (`YamlDoc.where`, a private helper) to `page.html#name`, whether or not the page
    documents it with `show_doc`; such a link would lead nowhere."""
    ids = {n: set(re.findall(r'\bid="([^"]+)"', t)) for n, t in pages.items()}
    out = {}
    for name, text in pages.items():
        here = os.path.dirname(name)
        def fix(m):
            target, anchor = m.group(2) or "", m.group(3)
            page = os.path.normpath(os.path.join(here, target[:-5])).replace(os.sep, "/") if target else name
            if page not in ids or html.unescape(anchor) in ids[page] or anchor in ids[page]: return m.group(0)
            return m.group(4)
        out[name] = re.sub(r'<a\s+([^>]*?)href="((?:[\w./-]+\.html)?)#([^"]+)"[^>]*>(.*?)</a>', fix, text, flags=re.S)
    return out

def contents_page(site: Site, css: str) -> str:
    def item(p):
        desc = f'<br><span class="sc-desc">{_md_inline(p[2])}</span>' if p[2] else ""
        return f'<li><a href="{p[0]}.html">{html.escape(site.label(p[0]))}</a>{desc}</li>'
    chapters = "\n".join(item(p) for p in site.chapters)
    kaggle = "\n".join(item(p) for p in site.kaggle)
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Contents – Safety Compass</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>\n{css}\n</style></head>'
            f'<body class="sc-contents-page"><main><h1>Safety Compass documentation</h1>'
            f'<p><a href="index.html">Overview (README)</a> · <a href="{site.chapters[0][0]}.html">start reading: '
            f'{html.escape(site.label(site.chapters[0][0]))}</a></p>'
            f"<h2>Chapters</h2><ul class=\"sc-toc\">{chapters}</ul>"
            + (f"<h2>Kaggle notebooks</h2><ul class=\"sc-toc\">{kaggle}</ul>" if kaggle else "")
            + "</main></body></html>")

def build():
    import nbformat
    from nbdev.config import get_config
    from kaggle_pages import kaggle_notebooks, readme_markdown, TITLE
    os.chdir(root)
    import safety_compass
    if Path(safety_compass.__file__).resolve().parent != root / "safety_compass":
        raise RuntimeError(f"safety_compass imports from {safety_compass.__file__}, not from {root}")
    names = notebook_names()
    process_notebooks(names)
    if DOCS.exists(): shutil.rmtree(DOCS)
    DOCS.mkdir()
    cfg = get_config()
    doc_prefix = f"{cfg.doc_host.rstrip('/')}{cfg.doc_baseurl.rstrip('/')}/"
    src_prefix = f"{cfg.git_url.rstrip('/')}/blob/{cfg.branch}/"
    css = (NBS / "styles.css").read_text(encoding="utf-8") if (NBS / "styles.css").exists() else ""

    chapters, rendered = [], {}
    for n in names:
        nb = nbformat.read(PROC / n, as_version=4)
        fm = front_matter(nb)
        stem = Path(n).stem
        title = str(fm.get("title") or _first_heading(nb) or stem)
        desc = fm.get("description")
        chapters.append((stem, title, str(desc) if desc else None, nb))
    kaggle = []
    knbs = kaggle_notebooks()
    if knbs:
        if (root / "kaggle" / "README.md").exists():
            text = readme_markdown(link_suffix=".html")
            kaggle.append(("kaggle/index", TITLE, None, nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(text)])))
        for p in knbs:
            nb = nbformat.read(p, as_version=4)
            kaggle.append((f"kaggle/{p.stem}", _first_heading(nb) or p.stem, None, nb))
    site = Site([c[:3] for c in chapters], [k[:3] for k in kaggle])
    pages = {}
    for name, title, desc, nb in _phase(chapters + kaggle, "docs: render pages"):
        body, _ = _exporter(name).from_notebook_node(nb)
        header = not name.startswith("kaggle/")   # a Kaggle notebook starts with its own heading
        pages[name] = finish_page(site, name, body, title, desc, css, header, doc_prefix, src_prefix)
    for name, text in unlink_missing_anchors(pages).items():
        out = DOCS / f"{name}.html"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
    (DOCS / "contents.html").write_text(contents_page(site, css), encoding="utf-8")
    print(f"wrote {len(site.pages) + 1} pages ({len(site.chapters)} chapters, {len(site.kaggle)} Kaggle, index, contents) "
          f"to {DOCS} (open {DOCS / 'contents.html'})")

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sidebar", action="store_true", help="rewrite nbs/sidebar.yml from nbs/*.ipynb and exit")
    a = ap.parse_args(argv)
    if a.sidebar:
        (NBS / "sidebar.yml").write_text(sidebar_text(notebook_names(), module_notebooks()), encoding="utf-8")
        print(f"wrote {NBS / 'sidebar.yml'} ({len(notebook_names())} notebooks)")
        return
    build()

if __name__ == "__main__":
    main()
