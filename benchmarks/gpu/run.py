"""GPU training-step cost of each mitigation method against a plain ``transformers.Trainer``: bf16, LoRA.

    python benchmarks/gpu/run.py [--models minilm smollm2 | HUB_NAME ...] [--output FILE.md]
    python benchmarks/gpu/run.py --device cpu --models tiny-bert tiny-llama --steps 2   # smoke run, no GPU

On whatever CUDA device is present, for each model (MiniLM-L6 as a sequence classifier and SmolLM2-135M as a
causal LM, both offline; or any Hub name or local folder), every method that applies to the model's task
trains on the same LoRA-wrapped weights, the same Adult sentences padded to one length, the same batch and
optimizer, in bf16 autocast. Per method the table gives:

* the median optimizer-step time (forward, backward, optimizer; ``torch.cuda.synchronize`` before each
  clock reading, the first ``--warmup`` steps of every run dropped), its ratio to the plain Trainer's, and
  the spread of the per-repeat medians (differences smaller than it are noise); methods run round-robin
  ``--repeats`` times, so drift of the machine hits them alike;
* the peak GPU memory of the run (``torch.cuda.max_memory_allocated``, reset before each run).

With more than one GPU it then launches itself through
``accelerate launch --config_file configs/accelerate_multi_gpu.yaml --num_processes N`` (DDP, the same
per-device batch) and adds the N-GPU step time, throughput ratio and scaling efficiency of the
``--scaling-methods``. The Markdown table is printed and written to ``--output`` (default on a GPU:
``benchmarks/results/gpu_<device>.md``).

Without CUDA it refuses, unless ``--device cpu`` asks for a smoke run of the same code (CPU timings say
nothing about a GPU, and the CPU run trains in float32).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCHMARKS = Path(__file__).resolve().parent.parent
REPO = BENCHMARKS.parent
for _path in (BENCHMARKS, REPO):  # overhead.py's step timer and trainer builder; fairtune from a checkout
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import torch  # noqa: E402
from overhead import StepTimer, build_trainer  # noqa: E402

ERR_NO_CUDA = (
    "No CUDA device is visible (torch {torch} reports torch.cuda.is_available() = False), and this "
    "benchmark measures GPUs. Run it on a machine with a CUDA GPU, or pass --device cpu for a smoke run of "
    "the same code (its timings say nothing about a GPU)."
)
ERR_TASK = "--task must be 'classification' or 'causal_lm' for model {name!r}; got {task!r}."
ERR_PROCESSES = "--scaling-processes must be >= 2 (or 0 for every visible GPU); got {n}."
ERR_METHOD = "unknown method {name!r}; choose from: {choices}."
CLASSIFICATION, CAUSAL_LM = "classification", "causal_lm"
PLAIN = "plain Trainer"
CONSISTENCY = "counterfactual_consistency"


@dataclass(frozen=True)
class Method:
    """FairTrainingArguments fields (None: the plain ``transformers.Trainer``) and the tasks it applies to."""

    fields: dict[str, Any] | None
    tasks: tuple[str, ...] = (CLASSIFICATION, CAUSAL_LM)


METHODS: dict[str, Method] = {
    PLAIN: Method(None),
    "FairTrainer, no method": Method({}),
    "demographic_parity": Method({"penalty": "demographic_parity"}, (CLASSIFICATION,)),
    "equalized_odds": Method({"penalty": "equalized_odds"}, (CLASSIFICATION,)),
    "loss_parity": Method({"penalty": "loss_parity"}),
    "kamiran_calders": Method({"reweighting": "kamiran_calders"}, (CLASSIFICATION,)),
    "group_dro": Method({"reweighting": "group_dro"}),
    "adversary (hidden)": Method({"adversary": "group", "adversary_input": "hidden"}),
    # Trained on gender-swapped pairs (more rows, each pair in one micro-batch), at the same batch size.
    CONSISTENCY: Method({"penalty": CONSISTENCY}),
}
SCALING_DEFAULT = [PLAIN, "demographic_parity", "loss_parity", "group_dro", "adversary (hidden)"]


@dataclass(frozen=True)
class ModelSpec:
    name: str  # as the table names it
    task: str
    source: str  # alias, folder or Hub name; "tiny" builds from a config


MODELS = {
    "minilm": ModelSpec("minilm", CLASSIFICATION, "minilm"),
    "smollm2": ModelSpec("smollm2", CAUSAL_LM, "smollm2"),
    # Built from a config with random weights (tests and smoke runs): MiniLM's tokenizer, tiny layers.
    "tiny-bert": ModelSpec("tiny-bert", CLASSIFICATION, "tiny"),
    "tiny-llama": ModelSpec("tiny-llama", CAUSAL_LM, "tiny"),
}


def model_spec(name: str, task: str | None) -> ModelSpec:
    """A known alias, or a Hub name / folder whose task comes from ``task`` or its config's architecture."""
    if name in MODELS:
        return MODELS[name]
    if task is None:
        from transformers import AutoConfig

        architectures = AutoConfig.from_pretrained(name).architectures or []
        task = CAUSAL_LM if any(a.endswith("ForCausalLM") for a in architectures) else CLASSIFICATION
    if task not in (CLASSIFICATION, CAUSAL_LM):
        raise SystemExit(ERR_TASK.format(name=name, task=task))
    return ModelSpec(name, task, name)


def load_model(spec: ModelSpec) -> tuple[torch.nn.Module, Any]:
    """(base model in float32 on the CPU, tokenizer with a pad token); LoRA is added per run."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from fairtune.config import resolve_model_path
    from fairtune.lm.models import ensure_pad_token, load_causal_lm

    if spec.source == "tiny":
        tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("minilm"))
        torch.manual_seed(0)
        if spec.task == CLASSIFICATION:
            from transformers import BertConfig, BertForSequenceClassification

            config = BertConfig(
                vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=64, num_labels=2,
            )  # fmt: skip
            return BertForSequenceClassification(config), tokenizer
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(
            vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
        )  # fmt: skip
        config.pad_token_id = tokenizer.pad_token_id
        return LlamaForCausalLM(config), tokenizer
    if spec.task == CAUSAL_LM:
        model, tokenizer = load_causal_lm(spec.source)
        return model.train(), tokenizer
    path = resolve_model_path(spec.source)
    tokenizer = ensure_pad_token(AutoTokenizer.from_pretrained(path))
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def lora(model: torch.nn.Module, task: str, rank: int) -> torch.nn.Module:
    """A copy of ``model`` with LoRA adapters (peft's default target modules for the architecture)."""
    from fairtune.config import ModelArguments
    from fairtune.pipeline import wrap_lora

    args = ModelArguments(use_lora=True, lora_r=rank, lora_alpha=2 * rank)
    return wrap_lora(copy.deepcopy(model), args, "SEQ_CLS" if task == CLASSIFICATION else "CAUSAL_LM")


def load_data(tokenizer: Any, rows: int, seq_len: int) -> dict[str, Any]:
    """Adult sentences tokenized to ``seq_len`` tokens (padded: every step has the same shape).

    Returns {"plain": rows, "pairs": each sentence with its gender-swapped copy and a shared pair id}.
    """
    from fairtune.config import DataArguments
    from fairtune.data.loading import augment_training_data, load_raw_datasets

    pair_args = DataArguments(
        max_train_samples=rows,
        counterfactual_augmentation="add",
        counterfactual_word_lists=["gender"],
        counterfactual_attribute="sex",
        counterfactual_swap_values=["Male:Female", "Female:Male"],
    )
    train = load_raw_datasets(DataArguments(max_train_samples=rows), seed=0)["train"]
    pairs = augment_training_data(train, pair_args, pair_ids=True)

    def encode(batch: dict[str, list[Any]]) -> Any:
        return tokenizer(batch["text"], truncation=True, max_length=seq_len, padding="max_length")

    return {name: ds.map(encode, batched=True) for name, ds in (("plain", train), ("pairs", pairs))}


def cuda_synchronize() -> None:
    torch.cuda.synchronize()


def time_run(
    name: str, base: torch.nn.Module, spec: ModelSpec, tokenizer: Any, data: dict[str, Any], opts: Any
) -> tuple[list[float], float | None]:
    """Train ``warmup + steps`` steps of one method; (timed step times in s, peak GPU memory in bytes)."""
    from transformers import DataCollatorForLanguageModeling, default_data_collator

    on_gpu = opts.device == "cuda"
    common = dict(
        output_dir=os.path.join(opts.tmp, "run"),
        per_device_train_batch_size=opts.batch_size,
        max_steps=opts.warmup + opts.steps,
        learning_rate=1e-4,
        logging_steps=10_000,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=not on_gpu,
        bf16=on_gpu,
        seed=0,
        dataloader_num_workers=0,
    )
    fields = METHODS[name].fields
    if fields is not None and spec.task == CAUSAL_LM:
        fields = {**fields, "task": CAUSAL_LM}
    collator = (
        default_data_collator  # rows are padded already
        if spec.task == CLASSIFICATION
        else DataCollatorForLanguageModeling(tokenizer, mlm=False)  # labels: the ids, padding -100
    )
    rows = data["pairs" if name == CONSISTENCY else "plain"]
    if on_gpu:
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    timer = StepTimer(cuda_synchronize if on_gpu else None)
    model = lora(base, spec.task, opts.lora_rank)
    trainer = build_trainer(fields, model, rows, tokenizer, common, [timer], data_collator=collator)
    trainer.train()
    peak = torch.cuda.max_memory_allocated() if on_gpu else None
    del trainer, model
    return timer.times[opts.warmup :], peak


def measure(spec: ModelSpec, names: list[str], opts: Any) -> dict[str, dict[str, Any]]:
    """{method: {"median_s", "spread", "peak_bytes"}} for one model, methods round-robin."""
    base, tokenizer = load_model(spec)
    data = load_data(tokenizer, opts.batch_size * (opts.warmup + opts.steps), opts.seq_len)
    if spec.task == CAUSAL_LM:  # the labels are the token ids; Trainer would pass the class along unused
        data = {k: ds.remove_columns("label") for k, ds in data.items()}
    times: dict[str, list[list[float]]] = {n: [] for n in names}
    peaks: dict[str, float | None] = {}
    for r in range(opts.repeats):
        for name in names:
            run_times, peak = time_run(name, base, spec, tokenizer, data, opts)
            times[name].append(run_times)
            peaks[name] = peak if peaks.get(name) is None else max(peaks[name], peak or 0)
            if is_main_process():
                print(f"{spec.name} repeat {r + 1}/{opts.repeats} {name}: {median(run_times) * 1e3:.1f} ms")
    out = {}
    for name in names:
        per_repeat = [median(t) for t in times[name]]
        out[name] = {
            "median_s": median([t for run in times[name] for t in run]),
            "spread": max(per_repeat) / min(per_repeat) - 1,
            "peak_bytes": peaks[name],
        }
    return out


def median(values: list[float]) -> float:
    return statistics.median(values)


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    import platform

    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def scale(spec: ModelSpec, names: list[str], processes: int, opts: Any) -> dict[str, dict[str, Any]]:
    """The same measurement on ``processes`` DDP processes, through ``accelerate launch`` of this script."""
    out = Path(tempfile.mkdtemp(prefix="fairtune-gpu-scaling-")) / "result.json"
    launcher = shutil.which("accelerate")
    cmd = [launcher, "launch"] if launcher else [sys.executable, "-m", "accelerate.commands.launch"]
    cmd += ["--config_file", str(REPO / "configs" / "accelerate_multi_gpu.yaml")]
    cmd += ["--num_processes", str(processes), "--main_process_port", str(free_port())]
    if opts.device == "cpu":
        cmd += ["--mixed_precision", "no"]  # the CPU smoke run trains in float32 on one process too
    cmd += [str(Path(__file__).resolve()), "--worker-json", str(out), "--models", spec.name]
    cmd += ["--task", spec.task, "--methods", *names, "--device", opts.device]
    for flag in ("steps", "warmup", "repeats", "batch_size", "seq_len", "lora_rank", "tmp"):
        cmd += [f"--{flag.replace('_', '-')}", str(getattr(opts, flag))]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *sys.path])})
    return json.loads(out.read_text())


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def header(opts: Any, processes: int) -> str:
    import peft
    import transformers

    precision = "bf16 autocast (float32 weights)" if opts.device == "cuda" else "float32 (CPU smoke run)"
    cuda = f", CUDA {torch.version.cuda}" if opts.device == "cuda" else ""
    return (
        f"Device: {device_name(opts.device)}{cuda}; torch {torch.__version__}, transformers "
        f"{transformers.__version__}, peft {peft.__version__}.\n"
        f"LoRA rank {opts.lora_rank} (peft's default target modules), {precision}; per-device batch "
        f"{opts.batch_size} x {opts.seq_len} tokens (Adult sentences, padded); {opts.steps} timed steps "
        f"after {opts.warmup} warm-up steps, x {opts.repeats} repeats round-robin; processes for scaling: "
        f"{processes if processes > 1 else 'none (one device)'}.\n"
        f"Command: python benchmarks/gpu/run.py {shlex.join(opts.argv)}\n"
    )


def table(model: str, rows: dict[str, dict[str, Any]]) -> str:
    base = rows[PLAIN]["median_s"]
    lines = [
        f"\n### {model}\n",
        "| method | median step | ratio to plain Trainer | spread of repeats | peak memory |",
        "|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        peak = "n/a (CPU)" if row["peak_bytes"] is None else f"{row['peak_bytes'] / 2**20:,.0f} MiB"
        lines.append(
            f"| {name} | {row['median_s'] * 1e3:.1f} ms | {row['median_s'] / base:.3f} | "
            f"{row['spread'] * 100:.1f}% | {peak} |"
        )
    return "\n".join(lines) + "\n"


def scaling_table(
    model: str, single: dict[str, dict[str, Any]], multi: dict[str, dict[str, Any]], n: int
) -> str:
    lines = [
        f"\n### {model}: 1 vs {n} processes (DDP, same per-device batch)\n",
        f"| method | step, 1 process | step, {n} processes | throughput ratio | scaling efficiency |",
        "|---|---|---|---|---|",
    ]
    for name, row in multi.items():
        one, many = single[name]["median_s"], row["median_s"]
        cells = [
            name,
            f"{one * 1e3:.1f} ms",
            f"{many * 1e3:.1f} ms",
            f"{n * one / many:.2f}x",
            f"{one / many:.0%}",
        ]
        lines.append(f"| {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--models", nargs="+", default=["minilm", "smollm2"],
                        help=f"aliases ({', '.join(MODELS)}), Hub names or local folders")  # fmt: skip
    parser.add_argument("--task", choices=[CLASSIFICATION, CAUSAL_LM], default=None,
                        help="task of a Hub model (default: from its config's architecture)")  # fmt: skip
    parser.add_argument("--methods", nargs="+", default=None, help=f"subset of: {', '.join(METHODS)}")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--scaling-methods", nargs="+", default=SCALING_DEFAULT)
    parser.add_argument("--scaling-processes", type=int, default=0,
                        help="processes of the scaling run (default: every visible GPU)")  # fmt: skip
    parser.add_argument(
        "--output", default=None, help="Markdown file (default on a GPU: results/gpu_<device>.md)"
    )
    parser.add_argument("--tmp", default=os.path.join(tempfile.gettempdir(), "fairtune-gpu-bench"))
    parser.add_argument("--worker-json", default=None, help=argparse.SUPPRESS)  # set by the scaling launch
    opts = parser.parse_args(argv)
    opts.argv = list(sys.argv[1:] if argv is None else argv)
    if opts.device == "cuda" and not torch.cuda.is_available():
        parser.error(ERR_NO_CUDA.format(torch=torch.__version__))
    for name in [*(opts.methods or []), *opts.scaling_methods]:
        if name not in METHODS:
            parser.error(ERR_METHOD.format(name=name, choices=", ".join(METHODS)))
    if opts.scaling_processes == 1 or opts.scaling_processes < 0:
        parser.error(ERR_PROCESSES.format(n=opts.scaling_processes))
    return opts


def main(argv: list[str] | None = None) -> str:
    """Run the benchmark; returns the Markdown it printed (and wrote to ``--output``)."""
    opts = parse(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    specs = [model_spec(name, opts.task) for name in opts.models]
    if opts.worker_json:  # one rank of the scaling launch: measure, rank 0 writes
        (spec,) = specs
        result = measure(spec, opts.methods, opts)
        if is_main_process():
            Path(opts.worker_json).write_text(json.dumps(result))
        return ""
    processes = opts.scaling_processes or (torch.cuda.device_count() if opts.device == "cuda" else 1)
    text = header(opts, processes)
    for spec in specs:
        names = [n for n in (opts.methods or list(METHODS)) if spec.task in METHODS[n].tasks]
        names = [PLAIN, *(n for n in names if n != PLAIN)]
        single = measure(spec, names, opts)
        text += table(f"{spec.name} ({spec.task})", single)
        if processes > 1:
            scaled = [PLAIN, *(n for n in opts.scaling_methods if n in names and n != PLAIN)]
            text += scaling_table(spec.name, single, scale(spec, scaled, processes, opts), processes)
    print("\n" + text)
    output = opts.output or (
        str(BENCHMARKS / "results" / f"gpu_{slug(device_name('cuda'))}.md") if opts.device == "cuda" else None
    )
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(text)
        print(f"written: {output}")
    return text


if __name__ == "__main__":
    main()
