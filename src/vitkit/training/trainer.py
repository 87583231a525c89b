"""`train(config, out_dir)`: the entry point of pre-training and fine-tuning; it never loses work.

The run directory (`RunDir`) holds the resolved config and plan (`train_config.json`), the last
two checkpoints, `metrics.jsonl`, and at the end `model.safetensors` + `config.json` (loadable with
`vitkit.load_model(out_dir)`) and `summary.json`. Running the same command again resumes from the
newest intact checkpoint and ends with the same weights, bit for bit on a CPU, as a run that was
never interrupted (training/state.py says why); a finished run is not redone.

Under torchrun every process runs `train` with the same arguments (training/distributed.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from vitkit.analysis import run_report
from vitkit.training import build
from vitkit.training.best import BestWeights
from vitkit.training.config import LENGTH_FIELDS, TrainConfig
from vitkit.training.distributed import (
    World,
    entered_by_rank_zero,
    launch,
    lost_peers_explained,
    process_group,
)
from vitkit.training.loop import Run
from vitkit.training.planner import Plan, calibrate, first_plan, resumed_plan
from vitkit.training.run_dir import RunDir
from vitkit.training.state import Checkpoints
from vitkit.training.summary import TrainSummary
from vitkit.training.tensorboard_log import add_figures_to_log


def train(
    config: TrainConfig, out_dir: str | Path, *, force: bool = False, command: str | None = None
) -> TrainSummary:
    """Train (or resume training) in `out_dir`; returns the summary also written there. `force`
    resumes with the changes that training/config.py's FORCEABLE_FIELDS allows. A complete run
    (run again: as it is) ends, unless `config.report` is off, with its curves, inspection
    figures and report.html
    (`run_report.write_run_outputs`, whose paths it prints); `command`: the command line that
    ran it, for the report (None: from Python)."""
    run_dir = RunDir(out_dir)
    launched = launch()
    device = build.resolve_device(config.device, launched)
    timeout = config.dist_timeout_seconds
    resume_hint = f"Running the same command again resumes from the last checkpoint in {run_dir}"
    with process_group(launched, device=device, timeout_seconds=timeout) as world:
        with lost_peers_explained(world, timeout_seconds=timeout, resume_hint=resume_hint):
            with entered_by_rank_zero(world, run_dir.locked()):
                with run_dir.writing():
                    run_dir.path.mkdir(parents=True, exist_ok=True)
                run = _start(config, run_dir, force=force, device=device, world=world)
                summary = run if isinstance(run, TrainSummary) else run.loop()
                if world.is_main and summary.complete and config.report:
                    with run_dir.writing():  # a failed write says so, as for every file
                        outputs = run_report.write_run_outputs(
                            run_dir.path, config, summary, command=command
                        )
                    for what, path in outputs.items():
                        print(f"{what}: {path}")
                    if not isinstance(run, TrainSummary):  # trained now: its figures are new
                        add_figures_to_log(config.log, run_dir.path, step=summary.steps)
                return summary


def _start(
    config: TrainConfig, run_dir: RunDir, *, force: bool, device: torch.device, world: World
) -> Run | TrainSummary:
    """The run, resumed from its newest checkpoint or planned anew; the summary of a run that is
    complete already."""
    saved = run_dir.saved_config()
    changes = run_dir.config_changes(saved, config, force=force) if saved else {}
    build.check_resolution(config)
    splits = build.resolve_splits(config)
    if world.is_main and (line := build.describe_splits(config, splits)):
        print(line, file=sys.stderr)
    train_set, validation = build.open_data(config, splits)
    num_classes = len(train_set.classes)
    model = build.new_model(config, num_classes=num_classes, device=device)
    held_out = build.open_held_out(config, splits, train_set.classes, validation,
                                   model.preprocessing)  # fmt: skip
    precision, why = build.resolve_precision(config.precision, device, model.config)
    if world.is_main:
        if config.init:
            build.report_architecture(config, model.config)
        print(f"precision {precision} ({why})", file=sys.stderr)
    state = build.build_state(config, model, precision=precision, device=device, world=world)
    augment = build.build_augment(config, model, num_classes=num_classes)
    train_step = build.build_step(config, augment, precision=precision, device=device,
                                  world=world, run_dir=run_dir)  # fmt: skip
    loader = build.build_loader(config, train_set, world)
    checkpoints = Checkpoints(run_dir, every=config.checkpoint_every, world=world)
    run = Run(config, run_dir, world, device, state, train_step, loader, held_out,
              Plan(0, 0), checkpoints)  # fmt: skip

    if config.keep_best:
        run.best = BestWeights.read(run_dir.path)
    resumed_from = checkpoints.resume(state)
    if resumed_from is None:
        if world.is_main:
            run_dir.truncate_metrics(0)

        def time_a_step() -> float:
            model = build.new_model(config, num_classes=num_classes, device=device)
            trial = build.build_state(config, model, precision=precision, device=device,
                                      world=world)  # fmt: skip
            batches = run.batches(0)
            return calibrate(lambda: train_step(trial, *next(batches), lr=config.lr), device=device)

        run.plan = first_plan(config, len(loader), seconds_per_step=time_a_step, world=world)
        if world.is_main:
            _write_config(run, forced=[])
        return run

    # The plan is train_config.json's, with what --force changed re-planned.
    saved_plan = Plan(saved["total_steps"], saved.get("warmup_steps", 0)) if saved else Plan(0, 0)
    run.plan = resumed_plan(saved_plan, config, changes if saved else LENGTH_FIELDS,
                            step=state.step, elapsed=state.elapsed,
                            steps_per_epoch=len(loader))  # fmt: skip
    if state.step >= run.plan.total_steps and (summary := run_dir.summary()) is not None:
        if world.is_main:
            print(f"{run_dir}: this run is complete ({state.step} steps)")
        return summary
    if world.is_main:
        print(f"resuming from {resumed_from} (step {state.step} of {run.plan.total_steps})")
        if changes:
            described = ", ".join(f"{key} {a!r} -> {b!r}" for key, (a, b) in changes.items())
            print(f"with the changes --force allows: {described}")
            record = {"at_step": state.step, "changed": {k: list(v) for k, v in changes.items()}}
            _write_config(run, forced=[*saved.get("forced", []), record])
        run_dir.truncate_metrics(state.step)
    return run


def _write_config(run: Run, *, forced: list[dict]) -> None:
    """train_config.json for this run's config, architecture and plan (see RunDir)."""
    run.run_dir.write_config(
        run.config,
        run.state.model.config,
        total_steps=run.plan.total_steps,
        warmup_steps=run.plan.warmup_steps,
        forced=forced,
        validation=run.held_out.validation_record,
    )
