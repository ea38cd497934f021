"""Coverage of the drift metrics' 95% bootstrap intervals on data with a known truth (see nbs/06_metrics.ipynb).

400 simulated datasets per setting: the Monte Carlo standard error of a coverage near 0.95 is
sqrt(0.95 * 0.05 / 400) = 0.011. The band [0.90, 0.99] is nominal 0.95 minus ~4.5 standard errors (room for the few
points that bootstrap intervals are known to lose at n = 20) and plus ~3.5 (an interval too wide to be informative
over-covers). The percentile interval of the cosine, which the sample cosine's bias pushes off the truth, is the
negative control: the same simulation must catch it.

Run as a script for the full table: python tests/test_coverage.py
"""
import numpy as np
import pytest

from safety_compass.metrics import DriftSimulation, interval_coverage, bootstrap_metrics

KEYS = ("cosine", "auroc_fixed", "auroc_current")
N_DATASETS = 400
LOW, HIGH = 0.90, 0.99
SETTINGS = {"moderate drift": DriftSimulation(cosine=0.9, auroc=0.9),
            "near-perfect, small drift": DriftSimulation(cosine=0.995, auroc=0.97),
            "no drift": DriftSimulation(cosine=1.0, auroc=0.9)}


@pytest.mark.parametrize("n_pairs", [20, 40])
def test_intervals_cover_moderate_drift(n_pairs):
    res = interval_coverage(SETTINGS["moderate drift"], n_pairs, N_DATASETS)
    for k in KEYS: assert LOW <= res[f"{k}_coverage"] <= HIGH, (k, res)


@pytest.mark.parametrize("name", ["near-perfect, small drift", "no drift"])
def test_intervals_cover_near_the_bounds(name):
    # cosine and AUROC near 1: intervals clipped at the bound may over-cover, so only the lower band and a width
    # that stays informative are required
    res = interval_coverage(SETTINGS[name], 20, N_DATASETS)
    for k in KEYS: assert res[f"{k}_coverage"] >= LOW, (k, res)
    assert res["cosine_width"] < 0.1 and res["auroc_current_width"] < 0.3, res


def test_simulation_catches_a_biased_interval():
    res = interval_coverage(SETTINGS["moderate drift"], 20, N_DATASETS, cosine_method="percentile")
    assert res["cosine_coverage"] < 0.5, res
    assert res["cosine_bias_sd"] < -1, res   # the sample cosine sits more than one standard deviation below the truth


def test_truth_is_the_population_value():
    # with many pairs the sample metrics converge to the simulation's stated truth
    sim = DriftSimulation(cosine=0.9, auroc=0.8, dim=8)
    base, now = sim.sample(np.random.default_rng(0), 4000, 4000)
    truth = sim.truth(base)
    from safety_compass.directions import cosine
    assert abs(cosine(base.direction()[0], now.direction()[0]) - truth["cosine"]) < 0.02
    assert abs(now.auroc_of(now.direction()[0]) - truth["auroc_current"]) < 0.02
    assert abs(now.auroc_of(base.direction()[0]) - truth["auroc_fixed"]) < 0.02


if __name__ == "__main__":
    import pandas as pd
    rows = [{"setting": name, "n_pairs": n, **interval_coverage(sim, n, N_DATASETS)}
            for name, sim in SETTINGS.items() for n in (20, 40)]
    print(pd.DataFrame(rows).round(3).to_string(index=False))
