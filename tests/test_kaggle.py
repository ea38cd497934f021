"Static checks of the Kaggle notebooks (kaggle/*.ipynb): parameters, setup cells, configs, smoke parameters, fixtures, docs. No model."
import ast, json, re, sys
from pathlib import Path
import nbformat, pytest, yaml
from conftest import ROOT

KAGGLE = ROOT / "kaggle"
FINETUNE = ["alpaca", "dolly", "code_alpaca"]
ALL = FINETUNE + ["behavior", "analysis"]
COMMON = {"INSTALL", "SMOKE"}
REQUIRED = {
    **{n: COMMON | {"MODEL", "MODEL_CONFIG", "EXPERIMENT_CONFIG", "DATASET", "SUBSET_SIZE", "MAX_STEPS", "MEASURE_EVERY_N_STEPS",
                    "METHOD", "CONCEPT_CONFIGS", "TRAINING_OVERRIDES", "MONITOR_OVERRIDES", "OUTPUT_DIR", "RESUME_FROM",
                    "TIME_BUDGET_HOURS"} for n in FINETUNE},
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
    assert p["INSTALL"].startswith(("git+https://", "safety-compass"))
    if name in FINETUNE:
        assert p["MODEL"] == "Qwen/Qwen3-8B" and p["MODEL_CONFIG"] == "configs/models/qwen3-8b.yaml"
        assert p["EXPERIMENT_CONFIG"] == f"configs/experiments/{name}_qlora.yaml"
        exp = yaml.safe_load((ROOT / p["EXPERIMENT_CONFIG"]).read_text())
        assert p["DATASET"] == exp["dataset"]["name"], "notebook and experiment config name the same dataset"
        assert p["SUBSET_SIZE"] == exp["dataset"]["subset_size"] and p["MEASURE_EVERY_N_STEPS"] == exp["monitor"]["measure_every_n_steps"]
        assert exp["model_config_file"] == p["MODEL_CONFIG"] and exp["method"] == "qlora"
        assert p["OUTPUT_DIR"] == f"/kaggle/working/{name}"
        assert 0 < p["TIME_BUDGET_HOURS"] < 12
    if name == "behavior":
        assert p["MODEL"] == "Qwen/Qwen3-8B" and p["MODEL_CONFIG"] == "configs/models/qwen3-8b.yaml"
        assert set(p["RUNS"]) == set(FINETUNE)
    if name == "analysis":
        assert len(p["RUN_DIRS"]) == 3

@pytest.mark.parametrize("name", ALL)
def test_setup_cells(name):
    src = code(read(name))
    # (1) install: pip install of INSTALL, skipped (and said so) in smoke mode
    assert re.search(r'"pip", "install".*INSTALL', src) and "if SMOKE:" in src and "skipping the install" in src
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

@pytest.mark.parametrize("name", FINETUNE)
def test_finetune_notebook_path(name):
    src = code(read(name))
    assert "run_finetune(" in src and "resume=RESUME" in src and "last_checkpoint" in src and "RESUME_FROM" in src
    assert 'load_model(MODEL, quantization=model_cfg.get("quantization")' in src  # NF4 from the model config
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
    assert s["SMOKE"] is True
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
    assert re.search(r"^\.PHONY:.*\bkaggle-smoke\b", mk, flags=re.M)
    test_target = re.search(r"^test: .*?(?=^\S)", mk, flags=re.M | re.S).group(0)
    assert "$(MAKE) kaggle-smoke" in test_target
    assert re.search(r"^kaggle-smoke:", mk, flags=re.M) and "papermill" in mk and "runs/kaggle-smoke" in mk
    ini = (ROOT / "settings.ini").read_text()
    assert re.search(r"^dev_requirements = .*\bpapermill\b.*\bipykernel\b", ini, flags=re.M)

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
