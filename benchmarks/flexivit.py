"""FlexiViT on CIFAR-10: one model trained with a patch size drawn per step, evaluated at each
patch size, against models trained at one patch size each for the same number of steps.

Every run is `vitkit train --preset demo-pretrain` at 32 px with the demo's transformer without
its ResNet root (ViT-CIFAR/4, width 128, 6 blocks) for --steps steps; `--model R+ViT-CIFAR/4
--patch-sizes 1 2 4` runs the demo's hybrid itself, its patches cut from the root's stride-4
map. The flexible run keeps the largest patch size as its own (FlexiViT's underlying kernel is
its largest) and draws from --patch-sizes; each fixed run trains at one of them. Each model is
then evaluated on the test set at every patch size it was trained for (the flexible one through
`load_model(..., patch_size=P)`), timing the evaluation: a speed/accuracy curve per patch size.
The runs, their record and report.html stay in --out, and the same command resumes.

    .venv/bin/python benchmarks/flexivit.py --data ../shared/data/cifar10-jpg.tar.gz
"""

from __future__ import annotations

import dataclasses
import time

from results import Benchmark, Summary, benchmark_arguments

from vitkit.evaluation.accuracy import top1_accuracy
from vitkit.experiments.engine import Outcome, Request, Seed
from vitkit.experiments.record import ExperimentRecord
from vitkit.training.config import parse_overrides
from vitkit.training.presets import get_preset
from vitkit.weights import load_model


def patch_sizes(arm: str, settings: dict) -> list[int]:
    """The patch sizes arm "flexible" or "fixedP" trains at (and is evaluated at)."""
    return settings["patch_sizes"] if arm == "flexible" else [int(arm.removeprefix("fixed"))]


def arm_runs(arm: str, seed: int, request: Request, record: ExperimentRecord) -> list:
    """One fixed-step run of the demo's pre-training recipe at 32 px, without evaluation; the
    flexible one keeps the largest patch size as its own and draws from all of them."""
    settings = record.content["settings"]
    sizes = patch_sizes(arm, settings)
    fields = [
        f"model={settings['model']}",
        "resolution=32",
        "budget_seconds=0",
        f"steps={settings['steps']}",
        "test_split=",
        f"model_fields=patch_size={sizes[-1]}",
    ]
    if arm == "flexible":
        fields.append(f"patch_sizes={','.join(map(str, sizes))}")
    base = dataclasses.replace(get_preset("demo-pretrain"), data=request.data, seed=seed)
    return [(arm, parse_overrides(base, fields))]  # fmt: skip


def measure_patch_sizes(record: ExperimentRecord, seed: Seed) -> None:
    """Each model's top-1, test images per second and tokens per image at each of its patch
    sizes (a hybrid's patches are cut from its ResNet's feature map)."""
    for arm, keys in seed.keys.items():
        for size in patch_sizes(arm, record.content["settings"]):
            model = load_model(record.run_folder(keys[-1]), patch_size=size)
            started = time.perf_counter()
            top1 = top1_accuracy(model, seed.test_set, preprocessing=model.preprocessing)
            speed = len(seed.test_set) / (time.perf_counter() - started)
            height, width = model.config.grid_size
            for name, value in (("top1", top1), ("images_per_second", speed),
                                ("tokens", height * width)):  # fmt: skip
                record.measured(keys[-1], f"{name}_patch{size}", lambda value=value: value)


def summarise(record: ExperimentRecord, outcome: Outcome) -> Summary:
    """Per seed and patch size: tokens, the flexible and the fixed model's top-1, the flexible
    one's evaluation speed, and the fixed run's training time."""
    settings = record.content["settings"]
    rows = []
    for seed in settings["seeds"]:
        flexible = record.runs[f"seed{seed}/flexible"]["measured"]
        for size in settings["patch_sizes"]:
            fixed = record.runs[f"seed{seed}/fixed{size}"]
            rows.append([str(size), str(seed), f"{flexible[f'tokens_patch{size}']:.0f}",
                         f"{flexible[f'top1_patch{size}']:.2%}",
                         f"{fixed['measured'][f'top1_patch{size}']:.2%}",
                         f"{flexible[f'images_per_second_patch{size}']:.0f}",
                         f"{fixed['seconds']:.0f} s"])  # fmt: skip
    return Summary(
        "FlexiViT on CIFAR-10 (fixed steps)",
        [f"{settings['model']}, {settings['steps']} steps per run."],
        [
            "patch size",
            "seed",
            "tokens",
            "flexible top-1",
            "fixed top-1",
            "eval img/s",
            "fixed run's training time",
        ],  # fmt: skip
        rows,
    )


BENCHMARK = Benchmark.of(
    "flexivit",
    "FlexiViT: one model at every patch size against one model per patch size",
    arms=("flexible", "fixed2", "fixed4", "fixed8"),
    runs=arm_runs,
    summarise=summarise,
    layout="runs/seedN/{flexible, fixedP}",
    own_fields=("model", "model_fields", "patch_sizes", "resolution"),
    measure=measure_patch_sizes,
)


def main() -> None:
    parser = benchmark_arguments(__doc__.split("\n\n")[0], out="flexivit", seeds=[0])
    parser.add_argument("--model", default="ViT-CIFAR/4")
    parser.add_argument("--patch-sizes", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--steps", type=int, default=800)
    args = parser.parse_args()
    sizes = sorted(args.patch_sizes)
    BENCHMARK.run(args, {"model": args.model, "patch_sizes": sizes, "steps": args.steps},
                  arms=("flexible", *(f"fixed{size}" for size in sizes)))  # fmt: skip


if __name__ == "__main__":
    main()
