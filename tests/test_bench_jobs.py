"""The jobs benchmark: its small jobs are valid configs, and a run's stage
seconds come out beside a saved run's."""

import pytest

from jaxrec.bench.jobs import JOBS, ROOT, comparison
from jaxrec.pipelines.config import load_pipeline


@pytest.mark.parametrize("job", list(JOBS))
def test_every_small_job_loads_with_its_overrides(job):
    config, overrides = JOBS[job]
    pipeline = load_pipeline(ROOT / config, [*overrides, "run_dir=/tmp/unused"])
    assert pipeline.stages  # a typo in an override (a stage renamed in the config) fails to load


def test_stage_seconds_come_out_beside_the_saved_runs_with_their_ratio():
    previous = {"jobs": {"llmsrec": {"wall_seconds": 100.0, "stages": {"teacher": 20.0, "llmsrec": 60.0}}}}
    current = {"jobs": {"llmsrec": {"wall_seconds": 80.0, "stages": {"teacher": 20.0, "llmsrec": 30.0,
                                                                      "without_uniformity": 10.0}}}}
    rows = comparison(previous, current)
    assert "| llmsrec | llmsrec | 60.0 | 30.0 | 0.50 |" in rows
    assert "| llmsrec | (whole job) | 100.0 | 80.0 | 0.80 |" in rows
    assert "| llmsrec | without_uniformity |  | 10.0 |  |" in rows  # new since the saved run
    assert all(row.count("|") == 6 for row in comparison(None, current))  # nothing saved yet
