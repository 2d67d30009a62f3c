"""Hand a grid of runs to a Hydra launcher: ``speedrunner run -m ... hydra/launcher=submitit_slurm``.

``cmd_grid`` (cli.py) expands the grid and names the run folders as always (``GRID/<NNN>_<swept>/``,
finished runs skipped); when a ``hydra/launcher=`` override is given, the runs that are left go to that
launcher in one call instead of running one after the other here. With hydra-submitit-launcher's
``submitit_slurm`` that is one Slurm job array, one array task per run: the search, its model calls and
its nodes all run on the compute node (the node's commands under the run's own ``executor``, by default
``local`` inside the allocation), nothing but the submission and the wait on the login node.

The launcher's own settings are Hydra overrides, ``hydra.launcher.partition=gpu
hydra.launcher.timeout_min=720 hydra.launcher.gpus_per_node=8 hydra.launcher.account=...`` (the plugin's
``SlurmQueueConf``; nothing site-specific is set here). Its files go to ``GRID/.launcher/`` (submitit's
pickles and logs in ``GRID/.launcher/.submitit/<array id>_<index>/``, Hydra's per-job folders beside them).

Each array task runs ``speedrunner run OVERRIDES run_dir=GRID/<NNN>_<swept>`` (or ``resume`` when the folder
already holds a journal), exactly the command the grid would have run locally, so a run folder is the
same whichever way it was made. This module sits above cli and runner (it calls ``cli.main`` inside the job).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


def is_launcher_override(override: str) -> bool:
    key = override.lstrip("+~").split("=", 1)[0]
    return key == "hydra/launcher" or key.startswith("hydra.launcher.")


@dataclass
class GridTask:
    """The task function each launched job runs (picklable: the launcher sends it to the job)."""

    config_dir: str | None = None

    def __call__(self, cfg: Any) -> int:
        from hydra.core.hydra_config import HydraConfig

        from speedrunner.cli import main

        overrides = list(HydraConfig.get().overrides.task)
        run_dir = Path(next(o.split("=", 1)[1] for o in overrides if o.startswith("run_dir=")))
        extra = ["--config-dir", self.config_dir] if self.config_dir else []
        if (run_dir / "journal.jsonl").exists():
            return main(["resume", str(run_dir)])
        return main(["run", *extra, *overrides])


def launch_grid(jobs: list[tuple[list[str], Path]], launcher_overrides: list[str], grid_dir: Path,
                config_dir: str | None = None) -> list[int]:
    """Run ``jobs`` (the overrides of one run, its run folder) through the Hydra launcher that
    ``launcher_overrides`` select; returns each run's exit status, in order (1 for a job that failed)."""
    from hydra._internal.callbacks import Callbacks
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.plugins import Plugins
    from hydra.core.utils import JobStatus
    from hydra.types import HydraContext, RunMode

    if not jobs:
        return []
    grid_dir = Path(grid_dir).resolve()
    sweep = grid_dir / ".launcher"
    hydra_overrides = [*launcher_overrides, f"hydra.sweep.dir={sweep}", "hydra.job.chdir=False"]
    if config_dir:
        hydra_overrides.append(f"hydra.searchpath=[file://{Path(config_dir).expanduser().resolve()}]")
    GlobalHydra.instance().clear()
    hydra = Hydra.create_main_hydra2(task_name="speedrunner",
                                     config_search_path=create_config_search_path("pkg://speedrunner.conf"))
    try:
        cfg = hydra.compose_config(config_name="config", overrides=hydra_overrides, run_mode=RunMode.MULTIRUN,
                                   with_log_configuration=False)
        launcher = Plugins.instance().instantiate_launcher(
            hydra_context=HydraContext(config_loader=hydra.config_loader, callbacks=Callbacks(cfg)),
            task_function=GridTask(str(Path(config_dir).expanduser().resolve()) if config_dir else None), config=cfg)
        runs = [[*combo, f"run_dir={Path(run_dir).resolve()}"] for combo, run_dir in jobs]
        returns = launcher.launch(runs, initial_job_idx=0)
    finally:
        GlobalHydra.instance().clear()
    codes = []
    for r in returns:
        ok = r.status == JobStatus.COMPLETED
        codes.append(int(r.return_value or 0) if ok else 1)
    return codes
