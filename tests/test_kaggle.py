"Static checks of the Kaggle notebooks (kaggle/*.ipynb): parameters, setup cells, configs, smoke parameters, fixtures, docs. No model."
import ast, json, re, sys
from pathlib import Path
import nbformat, pytest, yaml
from conftest import ROOT

KAGGLE = ROOT / "kaggle"
FINETUNE = ["alpaca", "dolly", "code_alpaca"]
ALL = FINETUNE + ["behavior", "analysis"]
COMMON = {"WHEEL_SEARCH", "INSTALL_URL", "SMOKE"}
REQUIRED = {
    **{n: COMMON | {"MODEL", "MODEL_CONFIG", "EXPERIMENT_CONFIG", "DATASET", "SUBSET_SIZE", "MAX_STEPS", "MEASURE_EVERY_N_STEPS",
                    "METHOD", "CONCEPT_CONFIGS", "TRAINING_OVERRIDES", "MONITOR_OVERRIDES", "OUTPUT_DIR", "RESUME_FROM",
                    "TIME_BUDGET_HOURS", "PROGRESS_EVERY_N_STEPS"} for n in FINETUNE},
    "behavior": COMMON | {"MODEL", "MODEL_CONFIG", "RUNS", "OUTPUT_ROOT", "CONCEPTS", "SCORER", "LIMIT", "MAX_NEW_TOKENS", "BATCH_SIZE"},
    "analysis": COMMON | {"RUN_DIRS", "OUTPUT_DIR", "REPORT"},
}
SCHEMAS = {"alpaca": ("alpaca.jsonl", {"instruction", "input", "output", "text"}),
           "dolly": ("dolly.jsonl", {"instruction", "context", "response", "category"}),
           "code_alpaca": ("code_alpaca.json", {"instruction", "input", "output"})}

def read(name): return nbformat.read(KAGGLE / f"{name}.ipynb", as_version=4)
def code_cells(nb): return [c for c in nb.cells if c.cell_type == "code"]
def code(nb): return "\n".join(c.source for c in code_cells(nb))

def parameters(nb) -> dict:
    "The `parameters` cell as {name: value}; every statement must be `NAME = <literal>`."
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1 and cells[0].cell_type == "code", "exactly one code cell tagged `parameters`"
    out = {}
    for node in ast.parse(cells[0].source).body:
        assert isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name), ast.dump(node)
        out[node.targets[0].id] = ast.literal_eval(node.value)
    return out

@pytest.mark.parametrize("name", ALL)
def test_notebook_is_valid_and_clean(name):
    nb = read(name)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    for c in code_cells(nb):
        assert c.outputs == [] and c.execution_count is None, "commit the Kaggle notebooks without outputs"
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    for c in code_cells(nb): compile(c.source, f"{name}.ipynb", "exec")  # no shell magics: papermill and Kaggle run plain Python

@pytest.mark.parametrize("name", ALL)
def test_parameters_cell(name):
    p = parameters(read(name))
    assert REQUIRED[name] <= set(p), f"missing: {sorted(REQUIRED[name] - set(p))}"
    assert p["SMOKE"] is False, "the committed defaults are the Kaggle (GPU) run"
    # the repository is not hosted yet: the default route is a wheel attached as a Kaggle Dataset, no placeholder URL
    assert p["WHEEL_SEARCH"] == "/kaggle/input" and p["INSTALL_URL"] == ""
    if name in FINETUNE:
        assert p["MODEL"] == "Qwen/Qwen3-8B" and p["MODEL_CONFIG"] == "configs/models/qwen3-8b.yaml"
        assert p["EXPERIMENT_CONFIG"] == f"configs/experiments/{name}_qlora.yaml"
        exp = yaml.safe_load((ROOT / p["EXPERIMENT_CONFIG"]).read_text())
        assert p["DATASET"] == exp["dataset"]["name"], "notebook and experiment config name the same dataset"
        assert p["SUBSET_SIZE"] == exp["dataset"]["subset_size"] and p["MEASURE_EVERY_N_STEPS"] == exp["monitor"]["measure_every_n_steps"]
        assert exp["model_config_file"] == p["MODEL_CONFIG"] and exp["method"] == "qlora"
        assert p["OUTPUT_DIR"] == f"/kaggle/working/{name}"
        assert 0 < p["TIME_BUDGET_HOURS"] < 12 and p["PROGRESS_EVERY_N_STEPS"] >= 1
    if name == "behavior":
        assert p["MODEL"] == "Qwen/Qwen3-8B" and p["MODEL_CONFIG"] == "configs/models/qwen3-8b.yaml"
        assert set(p["RUNS"]) == set(FINETUNE)
    if name == "analysis":
        assert len(p["RUN_DIRS"]) == 3

def install_cell(nb):
    cells = [c for c in code_cells(nb) if "def install_source(" in c.source]
    assert len(cells) == 1, "one install cell defining install_source"
    return cells[0].source

def install_source_fn(name):
    "The notebook's own `install_source` function, compiled from its install cell."
    tree = ast.parse(install_cell(read(name)))
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "install_source")
    ns = {"Path": Path}
    exec(compile(ast.Module(body=[fn], type_ignores=[]), f"{name}.ipynb", "exec"), ns)
    return ns["install_source"]

@pytest.mark.parametrize("name", ALL)
def test_setup_cells(name):
    src = code(read(name))
    # (1) install: the same steps in every notebook, smoke mode included (no skip)
    inst = install_cell(read(name))
    assert "if SMOKE" not in inst and "skipping" not in inst
    assert '"pip", "install"' in inst and "spec" in inst and "check=True" in inst
    assert 'metadata.version("safety-compass")' in inst and "pip uninstall -y safety-compass" in inst   # the 0.1.x project
    assert "locate_file" in inst and 'find_spec("safety_compass.config")' in inst and 'Version("0.2")' in inst
    for lib in ("torch", "transformers", "peft", "bitsandbytes", "accelerate"): assert f'"{lib}"' in inst
    # (2) GPU check: a T4 expected where the model runs, the CPU fallback otherwise
    assert "torch.cuda.is_available()" in src and "get_device_properties" in src
    if name != "analysis": assert '"T4" not in gpu.name' in src and "CPU fallback" in src
    # (3) an optional HF token from Kaggle Secrets, guarded so that it also runs outside Kaggle
    tree = ast.parse(src)
    guarded = [t for t in ast.walk(tree) if isinstance(t, ast.Try)
               and any(isinstance(s, ast.ImportFrom) and s.module == "kaggle_secrets" and s.names[0].name == "UserSecretsClient" for s in t.body)
               and any(isinstance(h.type, ast.Name) and h.type.id == "ImportError" for h in t.handlers)]
    assert guarded, "from kaggle_secrets import UserSecretsClient inside try/except ImportError"
    assert 'get_secret("HF_TOKEN")' in src

@pytest.mark.parametrize("name", ALL)
def test_install_source(name, tmp_path):
    "Wheel first (the newest, searched below the folder), else INSTALL_URL, else a message saying what to do."
    install_source = install_source_fn(name)
    (tmp_path / "a" / "b").mkdir(parents=True); (tmp_path / "c").mkdir()
    for p in ("a/b/safety_compass_observability-0.2.0-py3-none-any.whl", "c/safety_compass_observability-0.10.1-py3-none-any.whl",
              "c/safety_compass-0.1.3-py3-none-any.whl", "c/other-9.0-py3-none-any.whl"):
        (tmp_path / p).write_bytes(b"")
    assert install_source(str(tmp_path), "git+https://example.invalid/x.git") == (
        "wheel", str((tmp_path / "c/safety_compass_observability-0.10.1-py3-none-any.whl").resolve()))   # 0.10.1 > 0.2.0
    empty = tmp_path / "empty"; empty.mkdir()
    assert install_source(str(empty), "git+https://example.invalid/x.git@v1") == ("url", "git+https://example.invalid/x.git@v1")
    assert install_source(str(tmp_path / "no-such-dir"), "git+https://example.invalid/x.git") [0] == "url"
    with pytest.raises(RuntimeError) as e: install_source(str(empty), "")
    msg = str(e.value)
    assert "make dist" in msg and "Kaggle Dataset" in msg and "INSTALL_URL" in msg and "safety-compass" in msg

def _names(tree):
    "Names bound anywhere in `tree` (assignments, imports, defs, loop targets, with-as, except-as)."
    out = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store): out.add(n.id)
        elif isinstance(n, (ast.FunctionDef, ast.ClassDef)): out.add(n.name)
        elif isinstance(n, (ast.Import, ast.ImportFrom)): out |= {(a.asname or a.name).split(".")[0] for a in n.names}
        elif isinstance(n, ast.ExceptHandler) and n.name: out.add(n.name)
    return out

@pytest.mark.parametrize("name", ALL)
def test_parameter_names_are_defined(name):
    "A notebook mentions (in code or comments) only the parameters it defines: no TIME_BUDGET_HOURS without its value."
    every = set().union(*(parameters(read(n)) for n in ALL))
    src = code(read(name))
    used = {w for w in re.findall(r"\b[A-Z][A-Z0-9_]+\b", src) if w in every}
    assert used <= _names(ast.parse(src)), f"used but not defined here: {sorted(used - _names(ast.parse(src)))}"

@pytest.mark.parametrize("name", FINETUNE)
def test_finetune_notebook_path(name):
    src = code(read(name))
    assert "run_finetune(" in src and "resume=RESUME" in src and "last_checkpoint" in src and "RESUME_FROM" in src
    assert "callbacks=[budget, Progress(PROGRESS_EVERY_N_STEPS)]" in src   # a multi-hour run shows step, rate and ETA
    assert 'load_model(MODEL, quantization=model_cfg.quantization' in src  # NF4 from the model config
    assert '"lora"' in src and "CPU fallback" in src
    last = code_cells(read(name))[-1].source
    assert "reference_table" in last and "display(Image" in last and "drift_summary" in last

def test_finetune_notebooks_share_their_code():
    "Only the parameters differ between the three dataset notebooks: a fix in one is a fix in all."
    cells = {n: [c.source for c in code_cells(read(n)) if "parameters" not in c.metadata.get("tags", [])] for n in FINETUNE}
    assert cells["alpaca"] == cells["dolly"] == cells["code_alpaca"]

def test_behavior_and_analysis_use_the_package():
    src = code(read("behavior"))
    assert "evaluate(" in src and "write_behavior(" in src and "PeftModel" in src and "load_adapter" in src
    src = code(read("analysis"))
    assert "analyze(RUN_DIRS, OUTPUT_DIR)" in src and "report(RUN_DIRS, REPORT)" in src and "reference_table" in src

@pytest.mark.parametrize("name", ALL)
def test_smoke_parameters(name):
    "kaggle/smoke/<name>.yaml (what make kaggle-smoke passes) only sets existing parameters, to CPU-sized values."
    p = parameters(read(name))
    s = yaml.safe_load((KAGGLE / "smoke" / f"{name}.yaml").read_text())
    assert set(s) <= set(p), f"unknown parameters (papermill would add them silently): {sorted(set(s) - set(p))}"
    assert s["SMOKE"] is True and s["WHEEL_SEARCH"] == "dist", "smoke runs the install cell on the wheel `make dist` built"
    if "MODEL" in s: assert s["MODEL"] == "default" and s["MODEL_CONFIG"] == "configs/models/smollm2-135m.yaml"
    if name in FINETUNE:
        assert "EXPERIMENT_CONFIG" not in s, "smoke runs the same experiment config as Kaggle"
        assert (ROOT / s["DATASET"]).is_file() and s["DATASET"].startswith("tests/fixtures/kaggle/")
        assert s["MAX_STEPS"] <= 6 and s["OUTPUT_DIR"].startswith("runs/kaggle-smoke/")
        for f in s.get("CONCEPT_CONFIGS", {}).values(): assert (ROOT / f).is_file()
    for v in (s.get("RUNS") or {}).values(): assert v.startswith("runs/kaggle-smoke/")
    for v in s.get("RUN_DIRS") or []: assert v.startswith("runs/kaggle-smoke/")

@pytest.mark.parametrize("source", sorted(SCHEMAS))
def test_fixtures_have_the_sources_columns(source):
    fname, cols = SCHEMAS[source]
    path = ROOT / "tests" / "fixtures" / "kaggle" / fname
    rows = json.loads(path.read_text()) if fname.endswith(".json") else [json.loads(l) for l in path.read_text().splitlines() if l.strip()]
    assert len(rows) >= 16 and all(set(r) == cols for r in rows)
    assert all(isinstance(v, str) and v == v for r in rows for v in r.values())
    if source == "alpaca":  # `text` is the Alpaca prompt template with the output, as in tatsu-lab/alpaca
        for r in rows:
            head = "### Input:\n" + r["input"] + "\n\n" if r["input"] else ""
            assert r["text"].endswith(f"### Instruction:\n{r['instruction']}\n\n{head}### Response:\n{r['output']}")
    if source == "dolly":
        assert {r["category"] for r in rows} <= {"open_qa", "closed_qa", "classification", "brainstorming", "summarization",
                                                 "information_extraction", "creative_writing", "general_qa"}

def test_make_and_settings():
    mk = (ROOT / "Makefile").read_text()
    assert re.search(r"^\.PHONY:.*\bkaggle-smoke\b", mk, flags=re.M) and re.search(r"^\.PHONY:.*\bdist\b", mk, flags=re.M)
    test_target = re.search(r"^test: .*?(?=^\S)", mk, flags=re.M | re.S).group(0)
    assert "$(MAKE) kaggle-smoke" in test_target
    smoke = re.search(r"^kaggle-smoke:.*?(?=^\S|\Z)", mk, flags=re.M | re.S).group(0)
    assert re.match(r"kaggle-smoke: .*\bdist\b", smoke), "the smoke run installs a freshly built wheel"
    # a fresh venv with its own kernelspec runs the notebooks, and PYTHONPATH cannot put the checkout in front of the wheel
    assert "overlay-venv $(SMOKE_ENV) --kernel safety-compass-smoke" in smoke and "-k safety-compass-smoke" in smoke
    assert "env -u PYTHONPATH JUPYTER_PATH=$(SMOKE_ENV)/share/jupyter" in smoke and "papermill" in smoke
    ini = (ROOT / "settings.ini").read_text()
    assert re.search(r"^dev_requirements = .*\bpapermill\b.*\bipykernel\b", ini, flags=re.M)

def test_dolly_fits_a_t4():
    "Dolly's config trades micro-batch for accumulation (2 x 8, the study's 16 examples per step): see kaggle/README.md."
    t = yaml.safe_load((ROOT / "configs/experiments/dolly_qlora.yaml").read_text())["training"]
    assert t["per_device_train_batch_size"] <= 2 and t["per_device_train_batch_size"] * t["gradient_accumulation_steps"] == 16
    readme = (KAGGLE / "README.md").read_text()
    assert "2 × 8" in readme and "GPU-hours" in readme and "30" in readme

def test_docs_pages(tmp_path):
    "The Quarto pre-render step copies the notebooks into nbdev's _proc/ and adds one Kaggle sidebar section."
    sys.path.insert(0, str(ROOT / "tools"))
    import kaggle_pages
    assert [p.stem for p in kaggle_pages.kaggle_notebooks()] == ALL
    proc = tmp_path / "_proc"; proc.mkdir()
    (proc / "sidebar.yml").write_text("website:\n  sidebar:\n    contents:\n      - index.ipynb\n      - 00_core.ipynb\n")
    kaggle_pages.prerender(proc); kaggle_pages.prerender(proc)  # idempotent
    side = yaml.safe_load((proc / "sidebar.yml").read_text())["website"]["sidebar"]["contents"]
    assert side[:2] == ["index.ipynb", "00_core.ipynb"] and side[2]["section"] == "Kaggle" and len(side) == 3
    assert side[2]["contents"] == ["kaggle/index.md"] + [f"kaggle/{n}.ipynb" for n in ALL]
    assert all((proc / e).is_file() for e in side[2]["contents"])
    assert "pre-render: ../tools/kaggle_pages.py" in (ROOT / "nbs" / "_quarto.yml").read_text()
    assert not list((ROOT / "nbs").rglob("kaggle*")), "never in nbs/, where nbdev_test would execute them"
