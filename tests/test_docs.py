"""The documentation: `tools/build_docs.py` (what `make docs` runs where Quarto is absent) builds a page per notebook
with a figure from its worked example, previous / contents / next links, the whole subtitle, API signatures without
invented types, and clean outputs; it writes nothing outside _proc/ and _docs/; the committed sidebar lists exactly
the notebooks in nbs/.

The build takes a minute or two. `SAFETY_COMPASS_DOCS=<dir>` tests an existing build instead (e.g. `_docs` after
`make docs`); the clean-tree test then needs a build of its own and is skipped."""
import html, json, os, re, shutil, subprocess, sys, tempfile
from pathlib import Path

import nbformat, pytest, yaml
from conftest import ROOT

sys.path.insert(0, str(ROOT / "tools"))
import build_docs

NBS = ROOT / "nbs"
CHAPTERS = [Path(n).stem for n in build_docs.notebook_names(NBS) if n != "index.ipynb"]
# Chapters written on other branches: the committed sidebar lists them already (so it is exact once they are merged);
# until a notebook is here its entry is skipped by the build. Once it is here, it is checked like every other one.
AWAITING_MERGE: set = set()   # chapters listed in the sidebar before their branch is merged
# Chapters whose worked example does not store a figure yet (issue 11): their figure test is an expected failure, and
# a strict one, so it fails as soon as the figure is there, and the chapter must be taken off this list.
FIGURE_OWED: set = set()

def git(*args) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout

@pytest.fixture(scope="module")
def built():
    "`(docs directory, tree state before, tree state after, build log)`; the state is None for a given build."
    given = os.environ.get("SAFETY_COMPASS_DOCS")
    if given:
        d = Path(given)
        assert (d / "contents.html").is_file(), f"SAFETY_COMPASS_DOCS={given}: no contents.html there"
        return d, None, None, ""
    state = lambda: (git("status", "--porcelain", "--untracked-files=all"), git("diff", "--binary"))
    before = state()
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "build_docs.py")], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=1800)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return ROOT / "_docs", before, state(), r.stderr

def page(built, name) -> str:
    return (built[0] / f"{name}.html").read_text(encoding="utf-8")

def text_of(fragment: str) -> str:
    "Visible text of an HTML fragment, whitespace collapsed."
    return " ".join(html.unescape(re.sub(r"<[^>]+>", "", fragment)).split())

def description(stem: str) -> str:
    "The `> description` under a notebook's title, as written (nbdev's front matter comes from it)."
    nb = nbformat.read(NBS / f"{stem}.ipynb", as_version=4)
    first = next(c for c in nb.cells if c.cell_type == "markdown" and c.source.strip())
    quote = [l[1:].strip() for l in first.source.splitlines() if l.startswith(">")]
    return " ".join(" ".join(quote).split())

# -- the sidebar ------------------------------------------------------------------------------------------------------

def test_sidebar_lists_every_notebook_in_file_order():
    listed = [e for e in build_docs.sidebar_entries(NBS / "sidebar.yml") if e.endswith(".ipynb")]
    present = build_docs.notebook_names(NBS)
    assert [e for e in listed if e in present] == present, "run `python tools/build_docs.py --sidebar` and commit nbs/sidebar.yml"

def test_sidebar_lists_no_missing_notebook():
    missing, _ = build_docs.check_sidebar(NBS)
    assert set(missing) <= AWAITING_MERGE, f"nbs/sidebar.yml lists notebooks that are not in nbs/: {missing}"

def test_committed_sidebar_is_the_generated_one():
    "nbs/sidebar.yml is exactly what `build_docs.py --sidebar` writes for nbs/ (plus the chapters awaiting merge)."
    names = build_docs.notebook_names(NBS)
    names = sorted(set(names) | AWAITING_MERGE, key=lambda n: (n != "index.ipynb", n))
    assert (NBS / "sidebar.yml").read_text(encoding="utf-8") == build_docs.sidebar_text(names, build_docs.module_notebooks(NBS)), \
        "run `python tools/build_docs.py --sidebar` and commit nbs/sidebar.yml"

def test_sidebar_is_what_nbdev_writes():
    "Byte for byte what `nbdev_sidebar` writes for these notebooks, so `nbdev_docs` (Quarto) does not rewrite it either."
    from nbdev.quarto import nbdev_sidebar
    import contextlib, io
    out = io.StringIO()
    cwd = os.getcwd(); os.chdir(ROOT)
    try:
        with contextlib.redirect_stdout(out): nbdev_sidebar.__wrapped__(path=str(NBS), printit=True, force=True)
    finally: os.chdir(cwd)
    nbdev_view = build_docs.sidebar_text(build_docs.notebook_names(NBS), build_docs.module_notebooks(NBS))
    assert nbdev_view == out.getvalue().rstrip("\n") + "\n"

def test_build_tolerates_missing_and_unlisted_notebooks(tmp_path, capsys):
    (tmp_path / "00_a.ipynb").write_text("{}"); (tmp_path / "02_c.ipynb").write_text("{}"); (tmp_path / "index.ipynb").write_text("{}")
    (tmp_path / "sidebar.yml").write_text(build_docs.sidebar_text(["index.ipynb", "00_a.ipynb", "01_b.ipynb"]))
    test_eq = lambda a, b: (a == b) or pytest.fail(f"{a} != {b}")
    test_eq(build_docs.check_sidebar(tmp_path), (["01_b.ipynb"], ["02_c.ipynb"]))
    build_docs.proc_sidebar(tmp_path, tmp_path / "proc.yml")
    test_eq(build_docs.sidebar_entries(tmp_path / "proc.yml"), ["index.ipynb", "00_a.ipynb", "02_c.ipynb"])
    err = capsys.readouterr().err
    assert "lists 01_b.ipynb, which is not in nbs/: skipped" in err and "does not list 02_c.ipynb" in err

# -- the pages --------------------------------------------------------------------------------------------------------

def test_build_leaves_the_tree_clean(built):
    if built[1] is None: pytest.skip("SAFETY_COMPASS_DOCS: testing a given build, not building")
    assert built[1] == built[2], "the docs build changed files outside _proc/ and _docs/"

@pytest.mark.parametrize("stem", [pytest.param(s, marks=pytest.mark.xfail(strict=True, reason=f"{s}: figure owed (issue 11)"))
                                  if s in FIGURE_OWED else s for s in CHAPTERS])
def test_chapter_has_a_figure(built, stem):
    t = page(built, stem)
    assert re.search(r'<img[^>]+src="data:image/(png|jpeg|svg\+xml)', t) or "<svg" in t, f"{stem}: no figure in the page"

@pytest.mark.parametrize("stem", CHAPTERS)
def test_chapter_navigation(built, stem):
    t = page(built, stem)
    order = ["index"] + CHAPTERS
    i = order.index(stem)
    nxt = order[i + 1] if i + 1 < len(order) else "kaggle/index"
    for where in ("top", "bottom"):
        nav = re.search(rf'<nav class="sc-nav sc-nav-{where}"[^>]*>(.*?)</nav>', t, flags=re.S)
        assert nav, f"{stem}: no {where} navigation"
        hrefs = re.findall(r'href="([^"]+)"', nav.group(1))
        assert hrefs == [f"{order[i - 1]}.html", "contents.html", f"{nxt}.html"], (where, hrefs)
    for h in set(re.findall(r'href="([^"#:]+\.html)', t)):   # every local link resolves
        assert (built[0] / h).is_file(), f"{stem}: broken link {h}"

@pytest.mark.parametrize("stem", CHAPTERS)
def test_chapter_title_and_whole_subtitle(built, stem):
    t = page(built, stem)
    sub = re.search(r'<p class="sc-subtitle">(.*?)</p>', t, flags=re.S)
    assert sub, f"{stem}: no subtitle"
    assert text_of(sub.group(1)) == description(stem).replace("`", "").replace("**", ""), stem
    assert re.search(r'<h1 class="sc-title"[^>]*>[^<]+</h1>', t)

@pytest.mark.parametrize("stem", CHAPTERS)
def test_chapter_has_no_junk(built, stem):
    t = page(built, stem)
    assert "#| " not in t, f"{stem}: a raw nbdev/Quarto directive is shown"
    assert not re.search(r"\d ?(it|examples|B|MB)/s\]|s/it\]|\d+%\|", t), f"{stem}: a progress bar is shown"
    assert "NoneType" not in t, f"{stem}: a signature shows an invented NoneType annotation"
    assert 'target="_blank"' not in text_of(t), f"{stem}: Quarto link attributes shown as text"

def test_api_signatures_are_rendered(built):
    "nbdev's show_doc output: a heading, the signature with real annotations, the docstring and the docments table."
    t = page(built, "08_callback")
    m = re.search(r'<h3 id="SafetyCompassCallback".*?</pre>', t, flags=re.S)
    assert m, "no show_doc section for SafetyCompassCallback"
    sig = text_of(m.group(0))
    assert "log_file:str | Path | None=None" in sig and "trainer:transformers.Trainer | None=None" in sig, sig
    assert "the drift-log CSV" in text_of(t)          # a docments comment
    assert re.search(r'<h3 id="load_pairs"', page(built, "03_pairs"))
    t = page(built, "01_config")   # show_doc cells follow the source order of their definitions (one cell each here)
    assert t.index('id="YamlDoc"') < t.index('id="read_yaml"') < t.index('id="load_yaml"')
    assert t.index('id="resolve_relative"') < t.index('id="find_config"')

def test_index_and_contents(built):
    idx = page(built, "index")
    assert 'href="contents.html"' in idx and f'href="{CHAPTERS[0]}.html"' in idx
    toc = page(built, "contents")
    for stem in CHAPTERS: assert f'href="{stem}.html"' in toc, stem
    assert 'href="kaggle/index.html"' in toc and 'href="index.html"' in toc

def test_nbdev_doc_links_are_local(built):
    "Links nbdev adds to the published site (`pairs.html#...`) point at this build's pages (03_pairs.html#...)."
    for stem in CHAPTERS:
        t = page(built, stem)
        assert "safety-compass.github.io/safety-compass/" not in t, stem
        for target, anchor in re.findall(r'href="(\d+[a-zA-Z0-9]*_\w+\.html)#([^"]+)"', t):
            assert re.search(rf'id="{re.escape(anchor)}"', page(built, target[:-5])), (stem, target, anchor)

def test_links_to_missing_anchors_become_text():
    pages = {"a": '<h2 id="x">X</h2><a href="#x">x</a> <a href="b.html#y">y</a> <a href="b.html#gone"><code>Z</code></a>',
             "b": '<h2 id="y">Y</h2>', "kaggle/k": '<a href="../a.html#x">x</a> <a href="../a.html#q">q</a>'}
    out = build_docs.unlink_missing_anchors(pages)
    assert out["a"] == '<h2 id="x">X</h2><a href="#x">x</a> <a href="b.html#y">y</a> <code>Z</code>'
    assert out["kaggle/k"] == '<a href="../a.html#x">x</a> q' and out["b"] == pages["b"]

def test_outputs_are_cleaned():
    text, dropped = build_docs.clean_stream("Loading weights:   0%|          | 0/272 [00:00<?, ?it/s]\rLoading weights: 100%|#| 272/272 "
                                            "[00:00<00:00, 14479.82it/s]\nsycophancy: AUROC 0.797 is below min_auroc 0.80\n")
    assert (text, dropped) == ("sycophancy: AUROC 0.797 is below min_auroc 0.80\n", 1)
    from nbdev.frontmatter import _dict2fm   # the raw cell nbdev's processing writes
    fm = {"description": "a description long enough that YAML folds it onto a second line, with a colon: `code` and "
                         "a # that a regex would take for a comment", "title": "T"}
    raw = _dict2fm(fm)
    assert "\n  " in raw, raw   # folded: the case a line-by-line regex cuts short
    assert build_docs.front_matter(nbformat.v4.new_notebook(cells=[nbformat.v4.new_raw_cell(raw)])) == fm

# -- in a browser ------------------------------------------------------------------------------------------------------

def chromium() -> str | None:
    return next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser", shutil.which("chromium") or "",
                             shutil.which("google-chrome") or "") if p and Path(p).exists()), None)

CHECK = """<script>window.addEventListener("load", () => {
  const imgs = [...document.images].map(i => [i.complete, i.naturalWidth, i.naturalHeight]);
  document.body.setAttribute("data-check", JSON.stringify({imgs, nav: document.querySelectorAll("nav.sc-nav a").length}));
});</script>"""

@pytest.mark.skipif(chromium() is None, reason="no Chromium installed (apt-get install -y chromium): the browser check is skipped")
@pytest.mark.parametrize("stem", ["02_models", "08_callback"])
def test_images_decode_in_chromium(built, stem, tmp_path):
    t = page(built, stem).replace("</body>", CHECK + "</body>", 1)
    f = tmp_path / f"{stem}.html"; f.write_text(t, encoding="utf-8")
    prof = tempfile.mkdtemp(prefix="sc-chromium-")
    try:
        r = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                            "--no-first-run", "--disable-component-update", "--disable-sync", f"--user-data-dir={prof}",
                            "--virtual-time-budget=10000", "--dump-dom", f.as_uri()], capture_output=True, text=True, timeout=180)
    finally: shutil.rmtree(prof, ignore_errors=True)
    m = re.search(r'data-check="([^"]+)"', r.stdout)
    assert m, f"no result from Chromium (rc {r.returncode}): {r.stderr[-1500:]}"
    res = json.loads(html.unescape(m.group(1)))
    assert res["imgs"] and all(ok and w > 0 and h > 0 for ok, w, h in res["imgs"]), res
    assert res["nav"] >= 5, res   # top: prev, contents, next; bottom likewise

def test_no_machine_paths_in_stored_outputs():
    "Stored notebook outputs name no temporary directory, home or checkout (`tools/execute_nbs.py` writes them `<tmp>`, `~`, `<repo>`)."
    import execute_nbs
    assert execute_nbs.scrub_paths("at /tmp/tmpab12/x.csv and /root/.cache/y") == "at <tmp>/tmpab12/x.csv and ~/.cache/y"
    assert execute_nbs.MACHINE_PATH.search(execute_nbs.scrub_paths(str(ROOT / "nbs" / "a.ipynb"))) is None
    assert execute_nbs.MACHINE_PATH.search("written to /tmp/tmpab12/extract") and not execute_nbs.MACHINE_PATH.search("<tmp>/x")
    found = []
    for p in sorted(NBS.glob("*.ipynb")):
        for c in nbformat.read(p, as_version=4).cells:
            for o in c.get("outputs", []):
                texts = [o.get("text", "")] + [v for k, v in o.get("data", {}).items() if k.startswith("text/")]
                found += [f"{p.name} cell {c.get('id')}: {m.group(0)}" for t in texts
                          for m in [execute_nbs.MACHINE_PATH.search("".join(t) if isinstance(t, list) else t)] if m]
    assert found == [], found

def test_stored_outputs_stay_small():
    "A chapter stores its figures and short tables only: at most 250 KB of outputs per notebook (figures decoded)."
    import base64
    sizes = {}
    for p in sorted(NBS.glob("*.ipynb")):
        n = 0
        for c in nbformat.read(p, as_version=4).cells:
            for o in c.get("outputs", []):
                n += len(o.get("text", ""))
                for k, v in o.get("data", {}).items(): n += len(base64.b64decode(v)) if k == "image/png" else len(v)
        sizes[p.name] = n
    assert {k: v for k, v in sizes.items() if v > 250_000} == {}, sizes
