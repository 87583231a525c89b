"""`Run.loop`: batch -> step -> maybe log, evaluate, re-plan and checkpoint; then the final weights.

A `Run` is assembled by training/trainer.py from the parts: the run's files (run_dir.py), its state
and checkpoints (state.py), its length (planner.py), one optimizer step (step.py) and the
processes of a torchrun launch (distributed.py). Only rank 0 logs, shows progress and writes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from tqdm import tqdm

from vitkit.data.arrays import ArrayDataset
from vitkit.data.loader import ArrayLoader
from vitkit.evaluation.accuracy import classification_report, top1_counts
from vitkit.io import atomic_write_json
from vitkit.models.masked_patches import MaskedPatchViT
from vitkit.models.vit import VisionTransformer
from vitkit.training import parallel
from vitkit.training.config import TrainConfig
from vitkit.training.distributed import StopRequest, World
from vitkit.training.planner import Plan, Stopwatch, every, replanned
from vitkit.training.run_dir import EVAL_NAME, RunDir
from vitkit.training.state import Checkpoints, TrainState
from vitkit.training.step import TrainStep
from vitkit.training.summary import TrainSummary
from vitkit.weights.native import save_pretrained


@dataclass
class Run:
    """A run ready to train: its parts, its state (at step 0 or resumed) and its plan."""

    config: TrainConfig
    run_dir: RunDir
    world: World
    device: torch.device
    state: TrainState
    train_step: TrainStep
    loader: ArrayLoader
    test: ArrayDataset | None
    plan: Plan
    checkpoints: Checkpoints

    def loop(self) -> TrainSummary:
        """batch -> step -> maybe log, evaluate, re-plan and checkpoint, until the plan's end
        or a Ctrl-C."""
        config, world, state = self.config, self.world, self.state
        stop = StopRequest()
        metrics = self.run_dir.metrics(enabled=world.is_main)
        clock, window = Stopwatch(state.elapsed), Stopwatch(0.0)  # run time, log window time
        window_images = 0
        batches = self.batches(state.step)
        progress = tqdm(total=self.plan.total_steps, initial=state.step, desc="train",
                        unit="step", disable=not world.is_main)  # fmt: skip
        try:
            with stop.installed(world):
                while state.step < self.plan.total_steps:
                    lr = self.plan.learning_rate(state.step, config)
                    loss = self.train_step(state, *next(batches), lr=lr)
                    progress.update(1)
                    window_images += config.batch_size
                    if every(config.log_every, state.step) or state.step == self.plan.total_steps:
                        loss, rate = world.mean(loss), window_images / window.seconds
                        metrics.write({"step": state.step, "seconds": round(clock.seconds, 3),
                                       "loss": loss, "lr": lr, "images_per_s": rate})  # fmt: skip
                        progress.set_postfix(
                            loss=f"{loss:.4f}", lr=f"{lr:.2e}", img_s=f"{rate:.0f}"
                        )
                        window, window_images = Stopwatch(0.0), 0
                    if every(config.eval_every, state.step) and self.test is not None:
                        with clock.paused(), window.paused():  # neither budget nor img/s
                            top1 = self.evaluate(state.model)
                            metrics.write(
                                {
                                    "step": state.step,
                                    "seconds": round(clock.seconds, 3),
                                    "top1": top1,
                                }
                            )
                    if self.checkpoints.due(state.step) or stop.requested:
                        self.checkpoint(clock, progress)
                    if stop.requested:
                        print(f"stopped at step {state.step}; the same command resumes the run")
                        return self.summary(stopped_at_step=state.step)
                if not self.checkpoints.due(state.step):
                    self.checkpoint(clock, progress)
        finally:
            progress.close()
            metrics.close()
        return self.finish()

    def batches(
        self, step: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        """This process's slices of the global batches from `step` on, across epochs, with the
        images' sizes on their canvases where they keep their aspect ratios."""
        epoch, first = divmod(step, len(self.loader))
        while True:
            self.loader.set_epoch(epoch)
            yield from self.loader.sized_batches_from(first)
            epoch, first = epoch + 1, 0

    def checkpoint(self, clock: Stopwatch, progress: tqdm) -> None:
        """Re-plan a budgeted run at the pace so far, then save the state."""
        step = self.state.step
        plan = replanned(self.plan, self.config, step=step, seconds=clock.seconds, world=self.world)
        if plan != self.plan:
            self.plan = plan
            progress.total = plan.total_steps
            progress.refresh()
            if self.world.is_main:
                self.run_dir.record_plan(plan.total_steps)
        self.state.elapsed = clock.seconds
        self.checkpoints.save(self.state)

    def evaluate(self, model: VisionTransformer) -> float:
        """Top-1 on the test set: each process counts its own contiguous slice, without padding,
        and the counts are summed, so that every test image counts exactly once."""
        assert self.test is not None
        correct, total = top1_counts(
            parallel.unsharded(model),
            self.test,
            preprocessing=self.state.model.preprocessing,
            device=self.device,
            autocast_dtype=self.train_step.autocast_dtype,
            rank=self.world.rank,
            world_size=self.world.size,
            flip_average=self.config.eval_flip,
        )
        correct, total = self.world.sum([correct, total])
        return correct / total

    def evaluation(self, model: VisionTransformer) -> dict[str, object]:
        """The final weights' full report on the test split, as `vitkit eval` writes its
        eval.json (top-1, top-5, per class, confusion matrix), with the split's name: counted
        in this process, on the images and with the flip averaging of the run's top-1."""
        assert self.test is not None
        preprocessing = self.state.model.preprocessing
        report = classification_report(
            model, self.test, preprocessing=preprocessing, device=self.device,
            autocast_dtype=self.train_step.autocast_dtype, progress=None,
            flip_average=self.config.eval_flip,
        )  # fmt: skip
        return {
            "data": self.config.data,
            "split": self.config.test_split,
            "flip_average": self.config.eval_flip,
            "preprocessing": preprocessing.to_json(),
            **report.to_json(),
        }

    def summary(self, **results: float | int | None) -> TrainSummary:
        return TrainSummary(
            steps=self.state.step,
            images_seen=self.state.step * self.config.batch_size,
            resolution=self.state.model.config.img_size[0],
            seconds=round(self.state.elapsed, 3),
            **results,
        )

    def finish(self) -> TrainSummary:
        """Evaluate the final weights; rank 0 writes them, eval.json and the summary."""
        final = parallel.unsharded(self.state.final_model)
        results = {}
        evaluation = None
        if self.test is not None:
            start_time = time.perf_counter()
            if self.world.distributed:  # every process counts its slice, for its summary
                results["top1"] = self.evaluate(final)
            if self.world.is_main:  # the summary written: eval.json's count
                evaluation = self.evaluation(final)
                results["top1"] = evaluation["top1"]
            if self.state.ema is not None:
                results["top1_without_ema"] = self.evaluate(self.state.model)
            results["eval_seconds"] = round(time.perf_counter() - start_time, 1)
        summary = self.summary(**results)
        if self.world.is_main:
            if evaluation is not None:
                atomic_write_json(self.run_dir.path / EVAL_NAME, evaluation)
            if summary.top1 is not None:
                metrics = self.run_dir.metrics(enabled=True)
                metrics.write(
                    {"step": self.state.step, "seconds": summary.seconds, "top1": summary.top1}
                )
                metrics.close()
            with self.run_dir.writing():
                weights = final.encoder() if isinstance(final, MaskedPatchViT) else final
                # A masked-patch encoder has no classifier whose outputs the classes could name.
                classes = None if weights is not final else self.loader.dataset.classes
                save_pretrained(weights.cpu(), self.run_dir.path, class_names=classes)
            self.run_dir.write_summary(summary)
        return summary
