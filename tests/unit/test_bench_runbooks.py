"""bench/runbooks.py, the pure parts: a round's ratios and the pass/miss of every target."""

from __future__ import annotations

from bench.runbooks import DATASETS, Round, report


def _round(dataset: str, scale: float = 1.0, **overrides: float) -> Round:
    values = {
        "stream": 4.0 * scale,
        "backup_wall": 5.0 * scale,
        "backup_module": 4.2 * scale,
        "manual_restore": 16.0 * scale,
        "restore_wall": 17.0 * scale,
        "restore_module": 15.8 * scale,
    }
    values.update(overrides)
    return Round(dataset, **values)


def test_ratios_and_fixed_costs_of_a_round() -> None:
    ratios = _round("orders").ratios()
    assert round(ratios["restore/manual"], 4) == round(17.0 / 16.0, 4)
    assert round(ratios["backup/stream"], 4) == 1.25
    assert round(ratios["module/stream"], 4) == 1.05
    assert round(ratios["backup fixed s"], 4) == 0.8
    assert round(ratios["restore fixed s"], 4) == 1.2


def test_targets_use_the_median_of_the_ratios_within_rounds() -> None:
    # a noisy round (everything 30% slower) changes no ratio: medians of ratios, not of times
    rounds = [_round(d, scale) for d in DATASETS for scale in (1.0, 1.3, 0.9)]
    lines, checks = report(rounds)
    assert len(checks) == 5 * len(DATASETS)
    assert all(c["pass"] for c in checks), [c for c in checks if not c["pass"]]
    assert any("| orders | backup.yml through ansible-playbook |" in line for line in lines)


def test_a_slow_restore_and_a_heavy_playbook_are_misses() -> None:
    rounds = [_round(d, restore_wall=18.0, backup_wall=6.5) for d in DATASETS]
    _lines, checks = report(rounds)
    verdicts = {c["target"]: c["pass"] for c in checks}
    assert verdicts["restore.yml <= 1.1x manual (orders)"] is False  # 1.125x
    assert verdicts["backup.yml <= 1.5x plain stream (orders)"] is False  # 1.625x
    assert verdicts["backup.yml fixed cost <= 1.5 s (orders)"] is False  # 2.3 s
    assert verdicts["restore.yml fixed cost <= 1.5 s (orders)"] is False  # 2.2 s
    assert verdicts["pg_backup's own time <= 1.15x plain stream (orders)"] is True
