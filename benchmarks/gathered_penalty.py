"""Penalties on 2 gloo processes against 1 process with the same global batch, penalty_sync on and off.

    python benchmarks/gathered_penalty.py [--steps 200] [--batch 32] [--weight 1.0] [--seed 0]
        [--penalties demographic_parity equalized_odds loss_parity mindiff] [--out FILE.md]

Adult as FFB's tabular features (``load_tabular("adult")``, group ``sex``), the benchmark harness's MLP (one
hidden layer of 64), AdamW at 1e-3, the penalty at ``--weight``. The script runs itself twice: once with
``python`` (one process, per-device batch ``--batch``) and once with ``torchrun --nproc_per_node 2``
(per-device batch ``--batch / 2``, the same global batch: accelerate shards each global batch of the shared
permutation), the latter with ``penalty_sync`` on and off. Every optimizer step's penalty is logged (on 2
processes the mean of the ranks' values, which is the global value with sync on); the table gives, per
penalty, the median, 90th percentile and largest relative difference ``|p2 - p1| / |p1|`` over steps
between 2 processes and 1 (the largest comes from steps where p1 is near 0), and the test set's demographic
parity and equalized odds differences after the last step. With sync on the two runs follow one trajectory,
up to float rounding amplified over the steps; with it off each process penalises its own half-batch, so the
values and the trajectory drift apart. Values only: nothing here is timed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PENALTIES = ("demographic_parity", "equalized_odds", "loss_parity", "mindiff")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=32, help="global batch (even: halved on 2 processes)")
    parser.add_argument("--weight", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--penalties", nargs="+", default=list(PENALTIES))
    parser.add_argument("--out", help="also write the table (Markdown) to this file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: run the trainings, write JSON here
    return parser.parse_args(argv)


def worker(opts: argparse.Namespace) -> None:
    """Train every penalty (both sync settings on several processes); rank 0 writes the logged values."""
    import torch

    sys.path.insert(0, str(REPO))
    from benchmarks.run import MLP, quiet
    from fairtune import FairTrainer, FairTrainingArguments
    from fairtune.data.tabular import load_tabular
    from fairtune.pipeline import shutdown_distributed

    world = int(os.environ.get("WORLD_SIZE", "1"))
    data = load_tabular("adult", seed=opts.seed)
    results: dict[str, Any] = {}
    for penalty in opts.penalties:
        for sync in (True, False) if world > 1 else (True,):
            torch.manual_seed(opts.seed)
            model = MLP.build(len(data["train"][0]["features"]), 64)
            args = FairTrainingArguments(
                output_dir=str(Path(opts.worker) / f"run_{penalty}_{sync}"),
                group_by="sex",
                per_device_train_batch_size=opts.batch // world,
                per_device_eval_batch_size=1024,
                max_steps=opts.steps,
                learning_rate=1e-3,
                penalty=penalty,
                penalty_weight=opts.weight,
                penalty_sync=sync,
                logging_steps=1,
                bootstrap_samples=0,
                report_to="none",
                save_strategy="no",
                disable_tqdm=True,
                use_cpu=True,
                seed=opts.seed,
            )
            trainer = FairTrainer(model, args, train_dataset=data["train"])
            quiet(trainer)
            trainer.train()
            trainer.evaluate(data["test"], metric_key_prefix="test")
            gaps = trainer.fairness_results["test"]["sex"].gaps
            key = f"penalty/{penalty}"
            results[f"{penalty}/{sync}"] = {
                "penalty": [h[key] for h in trainer.state.log_history if key in h],
                "dp": float(gaps["demographic_parity_difference"]),
                "eo": float(gaps["equalized_odds_difference"]),
            }
    if int(os.environ.get("RANK", "0")) == 0:
        (Path(opts.worker) / f"world{world}.json").write_text(json.dumps(results))
    shutdown_distributed()


def _launch(prefix: list[str], opts: argparse.Namespace, out: Path) -> dict[str, Any]:
    cmd = [*prefix, str(Path(__file__).resolve()), "--worker", str(out), "--steps", str(opts.steps)]
    cmd += ["--batch", str(opts.batch), "--weight", str(opts.weight), "--seed", str(opts.seed)]
    cmd += ["--penalties", *opts.penalties]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-5000:]}")
    world = 2 if "--nproc_per_node" in prefix else 1
    return json.loads((out / f"world{world}.json").read_text())


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def relative(single: list[float], double: list[float]) -> list[float]:
    """Per-step |p2 - p1| / |p1| over the steps both runs logged (steps where p1 = 0 are skipped)."""
    return [abs(b - a) / abs(a) for a, b in zip(single, double, strict=True) if a != 0]


def main(argv: list[str] | None = None) -> None:
    opts = parse(argv)
    if opts.worker:
        worker(opts)
        return
    if opts.batch % 2:
        sys.exit(f"--batch must be even (halved on 2 processes); got {opts.batch}")
    exe = shutil.which("torchrun")
    torchrun = [exe] if exe else [sys.executable, "-m", "torch.distributed.run"]
    torchrun += ["--nnodes", "1", "--nproc_per_node", "2", "--master_addr", "127.0.0.1"]
    torchrun += ["--master_port", str(_free_port())]
    with tempfile.TemporaryDirectory() as tmp:
        one = _launch([sys.executable], opts, Path(tmp))
        two = _launch(torchrun, opts, Path(tmp))
    lines = [
        f"Adult (sex), MLP, global batch {opts.batch}, {opts.steps} steps, penalty weight {opts.weight}, "
        f"seed {opts.seed}: 2 gloo processes vs 1 process, relative difference of the per-step penalty.",
        "",
        "| penalty | sync | median rel. diff | 90th pct. | max | test DP diff (1 proc / 2 proc) "
        "| test EO diff (1 proc / 2 proc) |",
        "|---|---|---|---|---|---|---|",
    ]
    for penalty in opts.penalties:
        ref = one[f"{penalty}/True"]
        for sync in (True, False):
            run = two[f"{penalty}/{sync}"]
            rel = relative(ref["penalty"], run["penalty"])
            lines.append(
                f"| {penalty} | {'on' if sync else 'off'} | {statistics.median(rel):.2%} "
                f"| {statistics.quantiles(rel, n=10)[-1]:.2%} | {max(rel):.2%} "
                f"| {ref['dp']:.4f} / {run['dp']:.4f} | {ref['eo']:.4f} / {run['eo']:.4f} |"
            )
    table = "\n".join(lines)
    print(table)
    if opts.out:
        Path(opts.out).write_text(table + "\n")


if __name__ == "__main__":
    main()
