"""Pipelines: named stages over tasks, run in order with skip / resume /
rerun decided from their run directories, and a report at the end
(``config.py`` reads them, ``plan.py`` decides, ``runner.py`` runs,
``report.py`` writes the results)."""
