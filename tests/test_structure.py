"""The package's shape: data flows one way (no import cycles), one config module that the CLI, fine-tuning and monitor
use, a CLI with no plotting or training-argument logic, and figures made in the plots module only."""
import ast, itertools
from pathlib import Path
from conftest import ROOT

PKG = ROOT / "safety_compass"
MODS = {p.stem: p for p in PKG.glob("*.py") if p.stem not in ("_modidx", "__init__")}

def imports(mod: str) -> set[str]:
    "The package modules `mod` imports, anywhere in the file (lazy imports inside functions count too)."
    out = set()
    for n in ast.walk(ast.parse(MODS[mod].read_text())):
        if isinstance(n, ast.ImportFrom):
            name = n.module or ""
            target = name.split(".")[0] if n.level else (name.split(".")[1] if name.startswith("safety_compass.") else None)
            if target in MODS and target != mod: out.add(target)
        elif isinstance(n, ast.Import):
            for a in n.names:
                if a.name.startswith("safety_compass.") and a.name.split(".")[1] in MODS: out.add(a.name.split(".")[1])
    return out

EDGES = {m: imports(m) for m in MODS}

def reaches(a: str, b: str) -> bool:
    seen, todo = set(), [a]
    while todo:
        x = todo.pop()
        for y in EDGES[x]:
            if y == b: return True
            if y not in seen: seen.add(y); todo.append(y)
    return False

def test_no_import_cycles():
    cycles = [f"{a} <-> {b}" for a, b in itertools.combinations(sorted(MODS), 2) if reaches(a, b) and reaches(b, a)]
    assert not cycles, cycles

def test_one_config_module():
    for m in ("cli", "finetune", "monitor"):
        assert reaches(m, "config"), f"{m} does not use safety_compass.config"
    readers = [m for m, p in MODS.items() if m != "config" and ("yaml.safe_load" in p.read_text() or "read_yaml(" in p.read_text())]
    assert readers == [] or readers == ["finetune"], readers   # finetune only *writes* the config snapshot
    for m, p in MODS.items():
        if m == "config": continue
        tree = ast.parse(p.read_text())
        defined = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        assert not defined & {"load_yaml", "find_config", "resolve_relative", "training_arguments"}, (m, defined & {"load_yaml", "find_config"})

def test_thin_cli():
    src = MODS["cli"].read_text()
    for banned in ("matplotlib", "TrainingArguments", "yaml", "savefig", "subplots"):
        assert banned not in src, f"cli.py mentions {banned}"

def test_figures_only_in_plots():
    for m, p in MODS.items():
        if m == "plots": continue
        src = p.read_text()
        for drawing in ("plt.subplots", ".savefig(", "plt.figure(", "_mpl()", ".add_subplot("):
            assert drawing not in src, f"{m}.py draws a figure itself ({drawing}); figures live in plots.py"

def test_stats_is_a_ground_floor():
    "The statistics every chapter shares import nothing from the package but `core` (numpy, scipy and sklearn aside)."
    assert EDGES["stats"] <= {"core"}, EDGES["stats"]
    for m in ("directions", "metrics", "behavior", "audit"):
        assert "stats" in EDGES[m], f"{m} does not use safety_compass.stats"
