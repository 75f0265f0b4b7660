"""Evaluation memory against the number of rows: `GroupStats` in chunks and the trainer's evaluation loop.

    python benchmarks/streaming_eval.py [--groupstats 100000 1000000 10000000] [--trainer 100000 1000000]
        [--groups 16] [--chunk 65536] [--batch 1024] [--out benchmarks/results/streaming_eval_cpu.md]

Synthetic rows: 4 float features, a binary label and one of `--groups` groups (Zipf-like sizes), drawn chunk
by chunk from `numpy.random.default_rng([seed, chunk index])`, so every mode sees the same rows. Modes:

* `groupstats chunked`: rows generated and fed to `GroupStats(2, G).update(labels, groups, logits=...)`
  one chunk at a time, then `compute()`: only the counts stay in memory;
* `groupstats in memory`: the same rows generated whole, then one `update` (memory grows with N);
* `trainer streamed`: `FairTrainer.evaluate()` of a tiny MLP (4 -> 16 -> 2) on a `datasets.IterableDataset`
  read from Parquet files of the chunks above, 1M rows each (`load_dataset("parquet", ..., streaming=True)`,
  as `streaming: true` reads local files; the files are written, chunk by chunk, by a process of its own
  before the worker starts). Shards, because `datasets`' Parquet stream holds memory in proportion to the
  file it reads (a plain iteration over one file of 10M rows, without fairtune, held 640 MiB more than over
  an empty stream; over 0.4M rows, 44 MiB);
  streamed evaluation data is evaluated lean (only the `GroupStats` sums are kept; `lean_evaluation`);
* `trainer in memory`: the same rows as an in-memory `datasets.Dataset`, evaluated by Trainer's own loop
  (`lean_evaluation: false`, today's default for in-memory data: every loss, logit and label is kept);
* `trainer in memory, lean`: the in-memory dataset with `lean_evaluation: true`.

Each (mode, N) runs in a fresh Python process, so its peak RSS (`resource.getrusage(RUSAGE_SELF).ru_maxrss`,
the high-water mark of the process's resident memory, imports included) is its own. Rows per second count
the evaluation (the `update`s and `compute()`, or `evaluate()`), not imports or model building. What the
stream does is timed with it: `groupstats chunked` includes generating each chunk (the in-memory mode
generates before the clock starts), `trainer streamed` includes reading and decoding the Parquet file; the
in-memory trainer modes do not time building the `Dataset`. Every mode reports accuracy and the
demographic parity difference, which must agree across modes for the same N.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = (
    "groupstats chunked",
    "groupstats in memory",
    "trainer streamed",
    "trainer in memory",
    "trainer in memory, lean",
)


def chunks(n: int, chunk: int, groups: int = 16, seed: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """Synthetic rows in chunks: features (m, 4) float32, labels (m,), groups (m,), logits (m, 2) float32.

    The logits are those of a fixed linear scorer, so GroupStats and the trainer's model see alike data; the
    label depends on the group (a planted gap).
    """
    sizes = 1.0 / np.arange(1, groups + 1)
    p = sizes / sizes.sum()
    for index, start in enumerate(range(0, n, chunk)):
        m = min(chunk, n - start)
        rng = np.random.default_rng([seed, index])
        g = rng.choice(groups, size=m, p=p)
        x = rng.normal(size=(m, 4)).astype(np.float32)
        y = (x[:, 0] + 0.1 * g + 0.5 * rng.normal(size=m) > 0.5).astype(np.int64)
        logits = np.stack([np.zeros(m, np.float32), x[:, 0] + 0.05 * g], 1).astype(np.float32)
        yield {"features": x, "labels": y, "groups": g.astype(np.int64), "logits": logits}


def _summary(stats, seconds: float, rows: int) -> dict[str, float]:
    result = stats.compute([f"g{i:02d}" for i in range(stats.num_groups)], min_group_size=0)
    return {
        "rows": rows,
        "seconds": seconds,
        "accuracy": float(result.overall["accuracy"]),
        "dp_difference": float(result.gaps["demographic_parity_difference"]),
    }


def groupstats_chunked(n: int, chunk: int = 65_536, groups: int = 16) -> dict[str, float]:
    """GroupStats fed one generated chunk at a time (generation timed too: it is the stream)."""
    import torch

    from fairtune.metrics import GroupStats

    stats = GroupStats(2, groups)
    start = time.perf_counter()
    for c in chunks(n, chunk, groups):
        stats.update(
            torch.from_numpy(c["labels"]), torch.from_numpy(c["groups"]), logits=torch.from_numpy(c["logits"])
        )
    return _summary(stats, time.perf_counter() - start, n)


def groupstats_in_memory(n: int, chunk: int = 65_536, groups: int = 16) -> dict[str, float]:
    """The same rows held whole, one update (generation not timed)."""
    import torch

    from fairtune.metrics import GroupStats

    parts = list(chunks(n, chunk, groups))
    labels = torch.from_numpy(np.concatenate([c["labels"] for c in parts]))
    group_ids = torch.from_numpy(np.concatenate([c["groups"] for c in parts]))
    logits = torch.from_numpy(np.concatenate([c["logits"] for c in parts]))
    del parts
    stats = GroupStats(2, groups)
    start = time.perf_counter()
    stats.update(labels, group_ids, logits=logits)
    return _summary(stats, time.perf_counter() - start, n)


SHARD_ROWS = 1_000_000  # rows per Parquet file: datasets' Parquet stream holds memory in proportion to a file


def write_parquet(folder: str, n: int, chunk: int, groups: int, shard_rows: int = SHARD_ROWS) -> list[str]:
    """The synthetic rows as Parquet files of at most ``shard_rows`` rows (``rows-00000.parquet``, ...),
    written a chunk at a time (memory flat in N): features (4 floats), labels, group name ``g``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(folder, exist_ok=True)
    paths: list[str] = []
    writer, written = None, 0
    for c in chunks(n, chunk, groups):
        table = pa.table(
            {
                "features": pa.FixedSizeListArray.from_arrays(pa.array(c["features"].ravel()), 4),
                "labels": c["labels"],
                "g": [f"g{g:02d}" for g in c["groups"].tolist()],
            }
        )
        if writer is None or written >= shard_rows:
            if writer is not None:
                writer.close()
            paths.append(os.path.join(folder, f"rows-{len(paths):05d}.parquet"))
            writer, written = pq.ParquetWriter(paths[-1], table.schema), 0
        writer.write_table(table)
        written += table.num_rows
    writer.close()
    return paths


def trainer_eval(
    n: int,
    streamed: bool,
    out: str,
    lean: bool | None = None,
    chunk: int = 65_536,
    groups: int = 16,
    batch: int = 1024,
    parquet: str | None = None,
) -> dict[str, float]:
    """``FairTrainer.evaluate()`` of a tiny MLP on N rows, streamed or in memory (``lean`` as the option).

    ``parquet``: a folder holding the streamed rows' Parquet files, already written (else they are written
    here first)."""
    import datasets
    import torch
    from torch import nn

    from fairtune import FairTrainer, FairTrainingArguments
    from fairtune.data.streaming import declared_vocabulary

    datasets.disable_progress_bars()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))

    class Classifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = model

        def forward(self, features: torch.Tensor) -> torch.Tensor:
            return self.net(features)

    if streamed:
        # A local file read with streaming=True, as `streaming: true` reads train_file / validation_file.
        files = sorted(glob.glob(os.path.join(parquet, "*.parquet"))) if parquet else None
        files = files or write_parquet(os.path.join(out, "rows"), n, chunk, groups)
        data = datasets.load_dataset("parquet", data_files={"test": files}, streaming=True)["test"]
    else:
        parts = list(chunks(n, chunk, groups))
        data = datasets.Dataset.from_dict(
            {
                "features": np.concatenate([c["features"] for c in parts]),
                "labels": np.concatenate([c["labels"] for c in parts]),
                "g": [f"g{g:02d}" for c in parts for g in c["groups"].tolist()],
            }
        )
        del parts
    vocab = declared_vocabulary("g", None, {"g": [f"g{i:02d}" for i in range(groups)]})
    args = FairTrainingArguments(
        output_dir=out,
        group_by="g",
        num_labels=2,
        per_device_eval_batch_size=batch,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        bootstrap_samples=0,
        min_group_size=0,
        lean_evaluation=lean,
    )
    trainer = FairTrainer(Classifier(), args, group_vocab=vocab)
    start = time.perf_counter()
    metrics = trainer.evaluate(data)  # prepares (encodes groups) inside: timed, as a stream does it lazily
    seconds = time.perf_counter() - start
    result = trainer.fairness_results["eval"]["g"]
    return {
        "rows": int(result.overall["count"]),
        "seconds": seconds,
        "accuracy": float(result.overall["accuracy"]),
        "dp_difference": float(metrics["eval_g/demographic_parity_difference"]),
    }


def rss_trace(n: int, every: int = 10, batch: int = 1024, groups: int = 16) -> list[tuple[int, int]]:
    """(rows evaluated, VmRSS MiB) every ``every`` batches of a streamed ``trainer_eval(n)``: whether the
    resident memory of one streamed evaluation grows as it reads rows (``/proc/self/status``, Linux)."""
    from transformers import TrainerCallback

    import fairtune.trainer

    trace: list[tuple[int, int]] = []

    class Trace(TrainerCallback):
        steps = 0

        def on_prediction_step(self, args, state, control, **kwargs):
            self.steps += 1
            if self.steps % every == 0:
                with open("/proc/self/status") as f:
                    rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))
                trace.append((self.steps * batch, rss // 1024))

    init = fairtune.trainer.FairTrainer.__init__

    def traced_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.add_callback(Trace())

    fairtune.trainer.FairTrainer.__init__ = traced_init
    try:
        with tempfile.TemporaryDirectory() as out:
            trainer_eval(n, True, out, groups=groups, batch=batch)
    finally:
        fairtune.trainer.FairTrainer.__init__ = init
    return trace


def _worker(
    mode: str, n: int, chunk: int, groups: int, batch: int, parquet: str | None = None
) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as out:
        if mode == "groupstats chunked":
            result = groupstats_chunked(n, chunk, groups)
        elif mode == "groupstats in memory":
            result = groupstats_in_memory(n, chunk, groups)
        else:
            streamed = mode == "trainer streamed"
            lean = {"trainer streamed": None, "trainer in memory": False, "trainer in memory, lean": True}[
                mode
            ]
            result = trainer_eval(n, streamed, out, lean, chunk, groups, batch, parquet)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return result


def measure(mode: str, n: int, chunk: int, groups: int, batch: int) -> dict[str, float]:
    """Run one (mode, N) in a fresh process (its own peak RSS); returns the worker's JSON line."""
    argv = [
        sys.executable,
        __file__,
        "--worker",
        mode,
        str(n),
        "--chunk",
        str(chunk),
        "--groups",
        str(groups),
    ]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with tempfile.TemporaryDirectory() as folder:
        if mode == "trainer streamed":
            # The file is written by a process of its own: the worker's peak RSS is then the evaluation's,
            # not pyarrow's writer buffers.
            path = os.path.join(folder, "rows")
            subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--write-parquet",
                    path,
                    str(n),
                    "--chunk",
                    str(chunk),
                    "--groups",
                    str(groups),
                ],
                env=env,
                check=True,
            )
            argv += ["--parquet", path]
        done = subprocess.run(
            argv + ["--batch", str(batch)], capture_output=True, text=True, env=env, check=False
        )
    if done.returncode != 0:
        raise RuntimeError(f"{mode} at N={n} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(rows: list[dict[str, object]]) -> str:
    lines = [
        "| mode | rows | peak RSS (MiB) | seconds | rows/s | accuracy | DP difference |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['rows']:,} | {r['peak_rss_mib']:.0f} | {r['seconds']:.2f} | "
            f"{r['rows'] / r['seconds']:,.0f} | {r['accuracy']:.6f} | {r['dp_difference']:.6f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--groupstats", type=int, nargs="*", default=[100_000, 1_000_000, 10_000_000])
    parser.add_argument("--trainer", type=int, nargs="*", default=[100_000, 1_000_000])
    parser.add_argument("--trainer-in-memory", type=int, nargs="*", default=None, help="default: --trainer")
    parser.add_argument("--groups", type=int, default=16)
    parser.add_argument("--chunk", type=int, default=65_536)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--out", default=None)
    parser.add_argument(
        "--rss-trace", type=int, default=None, metavar="N", help="only trace VmRSS over N rows"
    )
    parser.add_argument("--worker", nargs=2, metavar=("MODE", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--write-parquet", nargs=2, metavar=("FOLDER", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--parquet", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.write_parquet:
        write_parquet(args.write_parquet[0], int(args.write_parquet[1]), args.chunk, args.groups)
        return 0
    if args.rss_trace:
        trace = rss_trace(args.rss_trace, batch=args.batch, groups=args.groups)
        print("rows evaluated, VmRSS MiB:", ", ".join(f"{r:,}: {m}" for r, m in trace))
        return 0
    if args.worker:
        mode, n = args.worker[0], int(args.worker[1])
        print(json.dumps(_worker(mode, n, args.chunk, args.groups, args.batch, args.parquet)))
        return 0
    plan = [(m, n) for n in args.groupstats for m in MODES[:2]]
    in_memory = args.trainer if args.trainer_in_memory is None else args.trainer_in_memory
    plan += [("trainer streamed", n) for n in args.trainer]
    plan += [(m, n) for n in in_memory for m in MODES[3:]]
    rows = []
    for mode, n in plan:
        result = measure(mode, n, args.chunk, args.groups, args.batch)
        rows.append({"mode": mode, **result})
        print(
            f"{mode:24s} N={n:>11,}  peak RSS {result['peak_rss_mib']:7.0f} MiB  {result['seconds']:8.2f} s",
            flush=True,
        )
    text = table(rows)
    print(text)
    if args.out:
        load = os.getloadavg()
        header = (
            f"`python benchmarks/streaming_eval.py {' '.join(argv if argv is not None else sys.argv[1:])}` "
            f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})\n\n"
            f"{args.groups} groups, chunks of {args.chunk:,} rows, trainer batch {args.batch}; peak RSS from "
            "`resource.getrusage(RUSAGE_SELF).ru_maxrss` of a fresh process per row (imports included); "
            f"load average at the end {load[0]:.1f} on {os.cpu_count()} cores; Python "
            f"{platform.python_version()}.\n\n"
        )
        with open(args.out, "w") as f:
            f.write(header + text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
