"""Run by test_pipelines in a subprocess: launch a pipeline and SIGKILL the
process when stage ``KILL_STAGE``'s data iterator is asked for batch ``KILL_AT``.

    python -m tests.pipeline_kill_script KILL_STAGE KILL_AT -- LAUNCH ARGS...
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from jaxrec import launch
from jaxrec.pipelines import runner
from jaxrec.data.batches import GrainBatches


def main(stage: str, kill_at: int, launch_args: list[str]) -> int:
    current = {"stage": None}
    run_task, next_batch = runner.run_task, GrainBatches.__next__

    def tracking_run_task(config, *args, **kwargs):
        current["stage"] = Path(config.run_dir).name
        return run_task(config, *args, **kwargs)

    def killing_next(self):
        if current["stage"] == stage and self.get_state()["next_index"] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return next_batch(self)

    runner.run_task = tracking_run_task
    GrainBatches.__next__ = killing_next
    return launch.main(launch_args)


if __name__ == "__main__":
    separator = sys.argv.index("--")
    sys.exit(main(sys.argv[1], int(sys.argv[2]), sys.argv[separator + 1:]))
