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
from vitkit.models.vit import VisionTransformer
from vitkit.training import parallel
from vitkit.training.best import BestWeights
from vitkit.training.build import HeldOut
from vitkit.training.config import TrainConfig
from vitkit.training.distributed import StopRequest, World
from vitkit.training.planner import Plan, Stopwatch, every, replanned
from vitkit.training.run_dir import EVAL_NAME, Metrics, RunDir
from vitkit.training.state import Checkpoints, TrainState
from vitkit.training.step import TrainStep
from vitkit.training.summary import TrainSummary
from vitkit.training.tasks import TASKS
from vitkit.training.tensorboard_log import open_log
from vitkit.training.validation import VALIDATION
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
    held_out: HeldOut
    plan: Plan
    checkpoints: Checkpoints
    best: BestWeights | None = None  # keep_best: set when the run starts

    def loop(self) -> TrainSummary:
        """batch -> step -> maybe log, evaluate, re-plan and checkpoint, until the plan's end
        or a Ctrl-C."""
        config, world, state = self.config, self.world, self.state
        stop = StopRequest()
        metrics = self.open_metrics(first_step=state.step + 1)
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
                    if every(config.eval_every, state.step) and self.watched is not None:
                        with clock.paused(), window.paused():  # neither budget nor img/s
                            self.evaluate_during(metrics, seconds=clock.seconds)
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

    def open_metrics(self, *, first_step: int) -> Metrics:
        """metrics.jsonl, written by rank 0; with log=tensorboard also TensorBoard's event
        files, which drop what an earlier process logged from `first_step` on."""
        if not self.world.is_main:
            return self.run_dir.metrics(enabled=False)
        mirror = open_log(self.config.log, self.run_dir.path, first_step=first_step)
        return self.run_dir.metrics(enabled=True, mirror=mirror)

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

    @property
    def watched(self) -> tuple[str, ArrayDataset] | None:
        """(name, images) of the split evaluated during training: the validation images where
        the run holds some out, else the test split; None without either."""
        if self.held_out.validation is not None:
            return VALIDATION, self.held_out.validation
        if self.held_out.test is not None:
            return self.config.test_split, self.held_out.test
        return None

    def evaluate_during(self, metrics: Metrics, *, seconds: float) -> None:
        """Top-1 of the weights the run would ship now (the EMA's, with ema_decay) on the watched
        split, into metrics.jsonl; with keep_best, kept in best/ when they beat the best so
        far."""
        assert self.watched is not None
        split, images = self.watched
        model = parallel.unsharded(self.state.final_model)
        top1 = self.evaluate(model, images)
        metrics.write({"step": self.state.step, "seconds": round(seconds, 3), "top1": top1,
                       "split": split})  # fmt: skip
        if self.best is not None and self.world.is_main:
            classes = self.loader.dataset.classes
            self.best.offer(model, top1=top1, step=self.state.step, classes=classes)

    def evaluate(self, model: VisionTransformer, images: ArrayDataset) -> float:
        """Top-1 on `images`: each process counts its own contiguous slice, without padding,
        and the counts are summed, so that every image counts exactly once."""
        correct, total = top1_counts(
            parallel.unsharded(model),
            images,
            preprocessing=self.state.model.preprocessing,
            autocast_dtype=self.train_step.autocast_dtype,
            rank=self.world.rank,
            world_size=self.world.size,
            flip_average=self.config.eval_flip,
        )
        correct, total = self.world.sum([correct, total])
        return correct / total

    def evaluation(
        self, model: VisionTransformer, images: ArrayDataset, split: str
    ) -> dict[str, object]:
        """The final weights' full report on `images` (the `split`), as `vitkit eval` writes its
        eval.json (top-1, top-5, per class, confusion matrix), with the split's name: counted
        in this process, on the images and with the flip averaging of the run's top-1."""
        preprocessing = self.state.model.preprocessing
        report = classification_report(
            model, images, preprocessing=preprocessing,
            autocast_dtype=self.train_step.autocast_dtype, progress=None,
            flip_average=self.config.eval_flip,
        )  # fmt: skip
        return {
            "data": self.config.data,
            "split": split,
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
        results: dict[str, float | int | None] = {}
        evaluation = None
        start_time = time.perf_counter()
        if (test := self.held_out.test) is not None:
            if self.world.distributed:  # every process counts its slice, for its summary
                results["top1"] = self.evaluate(final, test)
            if self.world.is_main:  # the summary written: eval.json's count
                evaluation = self.evaluation(final, test, self.config.test_split)
                results["top1"] = evaluation["top1"]
            if self.state.ema is not None:
                results["top1_without_ema"] = self.evaluate(self.state.model, test)
        if (validation := self.held_out.validation) is not None:
            results["validation_top1"] = self.evaluate(final, validation)
            if test is None and self.world.is_main:  # then eval.json reports the validation
                evaluation = self.evaluation(final, validation, VALIDATION)
        if self.best is not None and self.best.step >= 0:
            results["best_validation_top1"] = self.best.top1
            results["best_step"] = self.best.step
        if results:
            results["eval_seconds"] = round(time.perf_counter() - start_time, 1)
        summary = self.summary(**results)
        if self.world.is_main:
            if evaluation is not None:
                atomic_write_json(self.run_dir.path / EVAL_NAME, evaluation)
            if evaluation is not None:
                metrics = self.open_metrics(first_step=self.state.step + 1)
                top1, split = evaluation["top1"], evaluation["split"]
                metrics.write({"step": self.state.step, "seconds": summary.seconds,
                               "top1": top1, "split": split})  # fmt: skip
                metrics.close()
            task = TASKS[self.config.task]
            # Without a classifier, the saved model has no outputs the classes could name.
            classes = self.loader.dataset.classes if task.classifies else None
            with self.run_dir.writing():
                save_pretrained(task.saved(final).cpu(), self.run_dir.path, class_names=classes)
            self.run_dir.write_summary(summary)
        return summary
