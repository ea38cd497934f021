"""The fragility study at CPU scale (`make study-cpu`): its three experiments, the built-in code set, and the whole
pipeline end to end at 20 steps a run (long: `make test-long`; the full 120-step study is `make study-cpu`)."""
import json

import pytest

from safety_compass.config import load_experiment
from safety_compass.sft_data import load_rows

SETS = ("alpaca", "dolly", "code")


def test_study_experiments_fine_tune_the_organism_on_three_benign_sets():
    "The three bundled study experiments train the refusal organism, on the demo's concept sets, with one recipe."
    exps = {s: load_experiment(f"study_cpu_{s}") for s in SETS}
    demo = [str(c.pairs_file) for c in load_experiment("demo").concepts]
    for s, e in exps.items():
        assert e.model.model_name == "organism:refusal", s
        assert [c.name for c in e.concepts] == ["refusal", "sycophancy", "deception"], s
        assert [str(c.pairs_file) for c in e.concepts] == demo, s
    recipe = {s: (e.config.training["max_steps"], e.config.training["learning_rate"], e.config.monitor.measure_every_n_steps)
              for s, e in exps.items()}
    assert len(set(recipe.values())) == 1, recipe
    rows = load_rows(exps["code"].config.dataset.name)   # stdlib:code, read from the standard library at run time
    assert len(rows) > 100 and all(r["output"].lstrip().startswith("def ") for r in rows)


@pytest.mark.long   # about 25 minutes on a 2-core CPU (the organism cached): three 20-step runs, behavior, analysis
def test_study_cpu_pipeline_end_to_end(tmp_path):
    """Every stage of `make study-cpu` on the organism: the fine-tunes record the organism as their base model, the
    behavior runs load it from the run (the organism refuses; the embedded model would not), and the analysis gives
    the published table for three datasets with the directions that failed their gates marked."""
    from safety_compass.analyze import GATE_MARK, analyze, baseline_gates
    from safety_compass.cli import main
    import pandas as pd
    runs = [tmp_path / s for s in SETS]
    for s, run in zip(SETS, runs):
        assert main(["finetune", "--experiment-config", f"study_cpu_{s}", "--output-dir", str(run), "--max-steps", "20"]) == 0
        assert json.loads((run / "run.json").read_text())["base_model"] == "organism:refusal"
        assert main(["behavior", "--run-dir", str(run), "--concepts", "refusal", "--limit", "8"]) == 0
        beh = pd.read_csv(run / "behavior" / "behavior_summary.csv")
        base = beh[(beh.model == "base") & (beh.kind == "harmful")] if "kind" in beh else beh[beh.model == "base"]
        assert base.as_expected_rate.max() >= 0.5, beh   # the base model is the organism: it refuses harmful requests
    assert main(["analyze", *map(str, runs), "--output-dir", str(tmp_path / "analysis")]) == 0
    res = analyze(runs)
    ref = res["reference_table"]
    assert list(ref.index) == ["benign_alpaca", "benign_dolly", "stdlib:code"]
    for run, (ds, row) in zip(runs, ref.iterrows()):
        gates = baseline_gates(run)
        for concept, cell in row.items():
            assert cell.endswith(GATE_MARK) == (not gates[concept]["passes_gates"]), (ds, concept, cell)
    assert (tmp_path / "analysis" / "drift_vs_behavior.png").is_file()
