"""Benchmark runner: every (dataset, method, hyper-parameter, seed) of a suite through ``FairTrainer``.

    python benchmarks/run.py --suite benchmarks/suites/cpu_tabular.yaml [--limit N]

A suite (YAML) names its results file, seeds, datasets and methods; see ``benchmarks/suites/``. Each run
appends one JSON line to the results file with its configuration, seed, test metrics, wall time and machine.
Runs already in the file are skipped, so a killed suite resumes where it stopped. On the tabular datasets
the suite may add fairlearn peers (``ExponentiatedGradient``, ``ThresholdOptimizer``) on the same split and
features.

Suite keys:
  name, results (path of the JSONL file), seeds (list)
  datasets: {key: {kind: tabular, name: adult|compas, group_by, epochs, batch_size, learning_rate, hidden,
                   max_steps, training: {any FairTrainingArguments field, e.g. bf16: true}}
             | {kind: text, config: configs/quickstart.yaml, overrides: {key: value}}
             | {kind: lm, config: configs/lm_quickstart.yaml, overrides: {key: value}}}
  An lm run fine-tunes the causal LM and records its stereotype scores and held-out perplexity after
  training (the config's lm_report_* keys); a method's args may set a key to null (e.g. no augmentation).
  An lm dataset also gets one ``pretrained`` row (first seed): the model as loaded, scored untrained, the
  before every method is compared with.
  methods: [{name, args: {FairTrainingArguments fields}, sweep: {field: [values]}}]
  peers: [expgrad_dp, expgrad_eo, threshold_optimizer_dp, threshold_optimizer_eo]   (tabular and text; on
         text ThresholdOptimizer post-processes the fine-tuned unmitigated model and ExponentiatedGradient
         fits logistic regression on the frozen encoder's embeddings)
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from fairtune.metrics import GroupResult

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing

HEADLINE = ("accuracy", "demographic_parity_difference", "equalized_odds_difference", "worst_group_accuracy")
PEERS = ("expgrad_dp", "expgrad_eo", "threshold_optimizer_dp", "threshold_optimizer_eo")
ERR_SUITE_KEY = "Suite {path}: missing key {key!r}."
ERR_SUITE_MISSING = "Suite file {path} does not exist."
ERR_SUITE_YAML = "Suite {path} is not valid YAML: {error}"
ERR_SUITE_SHAPE = "Suite {path}: {key!r} must be {shape}."
SHAPES = {
    "seeds": "a non-empty list of integers",
    "datasets": "a mapping of dataset keys to their settings",
    "methods": "a list of mappings, each with a 'name'",
}
ERR_SUITE_EMPTY = (
    "Suite {path}: the file is empty or not a YAML mapping (keys: name, results, seeds, datasets, methods)."
)
ERR_DATASET_KIND = "Suite dataset {key!r}: kind must be 'tabular', 'text' or 'lm'; got {kind!r}."
KINDS = ("tabular", "text", "lm")
ERR_PEER = "Unknown peer {name!r}; valid peers: {valid}."
ERR_RESERVED = "Suite method name {name!r} is reserved (a peer or the lm datasets' untrained row); rename it."
PRETRAINED = "pretrained"


def machine() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or platform.machine()
    if os.path.isfile("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpus"] = torch.cuda.device_count()
    return info


def load_suite(path: str) -> dict[str, Any]:
    """The suite file, checked: every mistake is a ``ValueError`` naming the file and the key."""
    if not os.path.isfile(path):
        raise ValueError(ERR_SUITE_MISSING.format(path=path))
    with open(path) as f:
        try:
            suite = yaml.safe_load(f)
        except yaml.YAMLError as err:
            raise ValueError(ERR_SUITE_YAML.format(path=path, error=err)) from None
    if not isinstance(suite, dict):
        raise ValueError(ERR_SUITE_EMPTY.format(path=path))
    for key in ("name", "results", "seeds", "datasets", "methods"):
        if key not in suite:
            raise ValueError(ERR_SUITE_KEY.format(path=path, key=key))
    shapes = {
        "seeds": isinstance(suite["seeds"], list)
        and bool(suite["seeds"])
        and all(type(x) is int for x in suite["seeds"]),
        "datasets": isinstance(suite["datasets"], dict)
        and all(isinstance(v, dict) for v in suite["datasets"].values()),
        "methods": isinstance(suite["methods"], list)
        and all(isinstance(m, dict) and isinstance(m.get("name"), str) for m in suite["methods"]),
    }
    for key, ok in shapes.items():
        if not ok:
            raise ValueError(ERR_SUITE_SHAPE.format(path=path, key=key, shape=SHAPES[key]))
    for key, spec in suite["datasets"].items():
        if spec.get("kind") not in KINDS:
            raise ValueError(ERR_DATASET_KIND.format(key=key, kind=spec.get("kind")))
    for method in suite["methods"]:
        if method.get("name") in (*PEERS, PRETRAINED):
            raise ValueError(ERR_RESERVED.format(name=method.get("name")))
    for peer in suite.get("peers", []):
        if peer not in PEERS:
            raise ValueError(ERR_PEER.format(name=peer, valid=", ".join(PEERS)))
    return suite


def expand(suite: dict[str, Any]) -> list[dict[str, Any]]:
    """Every run of the suite: {dataset, method, params, seed}, methods' sweeps expanded, seed-major."""
    runs = []
    for dataset, spec in suite["datasets"].items():
        variants = []
        for method in suite["methods"]:
            sweep = method.get("sweep", {})
            for values in itertools.product(*sweep.values()) if sweep else [()]:
                params = {**method.get("args", {}), **dict(zip(sweep, values, strict=True))}
                variants.append((method["name"], params))
        if spec["kind"] in ("tabular", "text"):
            variants += [(peer, {}) for peer in suite.get("peers", [])]
        else:
            # The untrained model, scored once: nothing of it depends on the training seed (a seeded benchmark
            # subset does, so an lm suite compares methods best with lm_report_max_examples unset).
            runs.append({"dataset": dataset, "method": PRETRAINED, "params": {}, "seed": suite["seeds"][0]})
        # Seed-major: a suite stopped part-way holds every method on its first seeds, a fair comparison.
        for seed, (name, params) in itertools.product(suite["seeds"], variants):
            runs.append({"dataset": dataset, "method": name, "params": params, "seed": seed})
    return runs


def run_key(run: dict[str, Any]) -> str:
    return json.dumps([run["dataset"], run["method"], run["params"], run["seed"]], sort_keys=True)


def done_keys(path: str) -> set[str]:
    if not os.path.isfile(path):
        return set()
    with open(path) as f:
        return {run_key(json.loads(line)) for line in f if line.strip()}


# ----- one run ----------------------------------------------------------------------------------------
def _headline(result: GroupResult) -> dict[str, float]:
    values = {"accuracy": result.overall["accuracy"], **result.gaps}
    metrics = {k: float(values[k]) for k in HEADLINE}
    metrics["equalized_odds_sum"] = equalized_odds_sum(result)
    return metrics


def equalized_odds_sum(result: GroupResult) -> float:
    """FFB's EOdd: |TPR gap| + |FPR gap| (max - min over groups), where fairlearn takes the larger one."""
    total = 0.0
    for rate in ("tpr", "fpr"):
        values = [g[rate] for g in result.by_group.values() if rate in g and not math.isnan(g[rate])]
        if len(values) < 2:
            return math.nan
        total += max(values) - min(values)
    return total


class MLP:
    """Factory of the tabular model: features (N, D) -> logits (N, 2), one hidden ReLU layer."""

    @staticmethod
    def build(d_in: int, hidden: int) -> Any:
        from torch import nn

        class TabularMLP(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.net = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, 2))

            def forward(self, features):  # (N, D) -> (N, 2)
                return self.net(features)

        return TabularMLP()


def run_tabular(spec: dict[str, Any], run: dict[str, Any], workdir: str) -> dict[str, float]:
    import torch

    from fairtune import FairTrainer, FairTrainingArguments
    from fairtune.data.tabular import load_tabular

    data = load_tabular(spec["name"], seed=run["seed"])
    attribute = spec.get("group_by", "sex")
    if run["method"] in PEERS:
        return run_peer(run["method"], data, attribute, run["seed"])
    torch.manual_seed(run["seed"])
    model = MLP.build(len(data["train"][0]["features"]), spec.get("hidden", 64))
    params = dict(run["params"])
    args = FairTrainingArguments(
        output_dir=workdir,
        group_by=attribute,
        num_train_epochs=spec.get("epochs", 10),
        per_device_train_batch_size=spec.get("batch_size", 256),
        per_device_eval_batch_size=1024,
        learning_rate=spec.get("learning_rate", 1e-3),
        max_steps=spec.get("max_steps", -1),
        report_to="none",
        save_strategy="no",
        logging_steps=10_000,
        disable_tqdm=True,
        bootstrap_samples=0,
        seed=run["seed"],
        use_cpu=not torch.cuda.is_available(),  # also what makes several CPU processes train as one (gloo)
        overwrite_output_dir=True,
        **{**spec.get("training", {}), **params},  # e.g. training: {bf16: true} on a GPU
    )
    trainer = FairTrainer(model, args, train_dataset=data["train"], eval_dataset=data["validation"])
    quiet(trainer)
    trainer.train()
    return _evaluate(trainer, data["test"], attribute)


def parsed_config(spec: dict[str, Any], run: dict[str, Any], workdir: str) -> tuple[Any, Any, Any]:
    """The run's config file with the suite's overrides and the run's parameters on top, parsed.

    Lists become repeated flag values and mappings (``*_options``) JSON objects. A flag cannot say null or an
    empty list: those keys are set on the parsed arguments instead (no augmentation, no penalty, no monitor).
    """
    import torch

    from fairtune.config import parse_config

    argv = ["--config", str(REPO / spec["config"]), "--output_dir", workdir, "--overwrite_output_dir", "true"]
    settings = {**spec.get("overrides", {}), **run["params"], "seed": run["seed"], "disable_tqdm": True}
    settings.setdefault("use_cpu", not torch.cuda.is_available())
    unset = {key: value for key, value in settings.items() if value is None or value == []}
    for key, value in settings.items():
        if key in unset:
            continue
        if isinstance(value, dict):
            values = [json.dumps(value)]
        else:
            values = [str(v) for v in (value if isinstance(value, list) else [value])]
        argv += [f"--{key}", *values]
    parsed = parse_config(argv)
    for key, value in unset.items():
        target = next((t for t in parsed if hasattr(t, key)), None)
        if target is None:
            raise ValueError(f"Suite run {run_key(run)}: {key!r} is not a config key.")
        setattr(target, key, value)
    return parsed


# (dataset key, seed) -> the unmitigated text model's validation and test scores, kept by the suite's `erm`
# run so that ThresholdOptimizer post-processes that same model without training it again.
_ERM_SCORES: dict[tuple[str, int], dict[str, Any]] = {}
# dataset key -> frozen-encoder embeddings of the text splits (the same for every seed).
_EMBEDDINGS: dict[str, dict[str, Any]] = {}


def run_text(spec: dict[str, Any], run: dict[str, Any], workdir: str) -> dict[str, float]:
    if run["method"] in PEERS:
        return run_text_peer(spec, run, workdir)
    trainer, data, attribute = _train_text(spec, run, workdir)
    if run["method"] == "erm" and not run["params"]:
        _keep_erm_scores(trainer, data, attribute, (run["dataset"], run["seed"]))
    return _evaluate(trainer, data["test"], attribute)


def _train_text(spec: dict[str, Any], run: dict[str, Any], workdir: str) -> tuple[Any, Any, str]:
    from fairtune.pipeline import build

    spec = {**spec, "overrides": {"bootstrap_samples": 0, **spec.get("overrides", {})}}
    model_args, data_args, args = parsed_config(spec, run, workdir)
    trainer, data = build(model_args, data_args, args)
    quiet(trainer)
    trainer.train()
    return trainer, data, args.group_by


def _keep_erm_scores(trainer: Any, data: Any, attribute: str, key: tuple[str, int]) -> dict[str, Any]:
    import numpy as np

    kept = {}
    for split in ("validation", "test"):
        scored = trainer.positive_scores(data[split], split)
        kept[split] = (scored.scores, scored.labels, np.asarray(data[split][attribute]))
    _ERM_SCORES[key] = kept
    return kept


def run_text_peer(spec: dict[str, Any], run: dict[str, Any], workdir: str) -> dict[str, float]:
    """fairlearn on the text task.

    ``threshold_optimizer_*``: ThresholdOptimizer on the fine-tuned unmitigated model's scores (prefit),
    fitted on validation as our group thresholds are. ``expgrad_*``: ExponentiatedGradient over logistic
    regression on the frozen pretrained encoder's mean-pooled embeddings (reductions refit their model).
    """
    name, seed = run["method"], run["seed"]
    if name.startswith("threshold_optimizer"):
        erm = {**run, "method": "erm", "params": {}}
        kept = _ERM_SCORES.get((run["dataset"], seed))
        if kept is None:
            trainer, data, attribute = _train_text(spec, erm, workdir)
            kept = _keep_erm_scores(trainer, data, attribute, (run["dataset"], seed))
        (v_scores, y_fit, s_fit), (t_scores, y_test, s_test) = kept["validation"], kept["test"]
        fit, test = v_scores[:, None], t_scores[:, None]  # (N, 1): the score is the feature
        return _peer_result(name, fit, y_fit, s_fit, test, y_test, s_test, seed, prefit=True)
    if run["dataset"] not in _EMBEDDINGS:
        _EMBEDDINGS[run["dataset"]] = _frozen_embeddings(spec, run, workdir)
    e = _EMBEDDINGS[run["dataset"]]
    return _peer_result(name, *e["train"], *e["test"], seed)


def _frozen_embeddings(spec: dict[str, Any], run: dict[str, Any], workdir: str) -> dict[str, Any]:
    """split -> (embeddings (N, H), labels (N,), groups (N,)): mean-pooled last hidden states of the config's
    pretrained encoder, untrained."""
    import numpy as np
    import torch

    from fairtune.pipeline import build

    model_args, data_args, args = parsed_config(spec, {**run, "params": {}}, workdir)
    trainer, data = build(model_args, data_args, args)
    encoder = trainer.model.base_model.eval()  # the pretrained encoder under a fresh head, never trained
    out = {}
    for split in ("train", "test"):
        rows = data[split]
        inputs = [c for c in ("input_ids", "token_type_ids", "attention_mask") if c in rows.column_names]
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(rows), 64):
                batch = rows[start : start + 64]
                width = max(len(ids) for ids in batch["input_ids"])
                tensors = {
                    c: torch.tensor([list(v) + [0] * (width - len(v)) for v in batch[c]]) for c in inputs
                }
                hidden = encoder(**tensors).last_hidden_state  # (B, T, H)
                mask = tensors["attention_mask"][..., None].float()
                chunks.append(((hidden * mask).sum(1) / mask.sum(1)).numpy())
        labels = np.asarray(rows[data_args.label_column])
        out[split] = (np.concatenate(chunks), labels, np.asarray(rows[args.group_by]))
    return out


def run_lm(spec: dict[str, Any], run: dict[str, Any], workdir: str) -> dict[str, float]:
    """Fine-tune a causal LM as the config and the method say; its scores after training, flat keys. The
    ``pretrained`` run scores the model as loaded (LoRA adapters start as the identity), untrained."""
    from fairtune.lm_pipeline import score_lm
    from fairtune.pipeline import build

    model_args, data_args, args = parsed_config(spec, run, workdir)
    trainer, data = build(model_args, data_args, args)
    quiet(trainer)
    if run["method"] != PRETRAINED:
        trainer.train()
    metrics = trainer.evaluate(data["test"], metric_key_prefix="test")
    scores = score_lm(trainer, data, model_args.model_name_or_path).flat()
    return {**scores, **{k: v for k, v in metrics.items() if "/" in k or k == "test_perplexity"}}


def quiet(trainer: Any) -> None:
    """No per-log printing: the suite's progress bar is the terminal view; rows hold the numbers."""
    from transformers.trainer_callback import PrinterCallback

    trainer.pop_callback(PrinterCallback)


def _evaluate(trainer: Any, test: Any, attribute: str) -> dict[str, float]:
    grouping = trainer.group_vocab.train_grouping
    if trainer.post_processing is None:
        trainer.evaluate(test, metric_key_prefix="test")
        return _headline(trainer.fairness_results["test"][grouping])
    trainer.fit_thresholds()
    _, results = trainer.predict_with_thresholds(test)
    return _headline(results[grouping])


def run_peer(name: str, data: Any, attribute: str, seed: int) -> dict[str, float]:
    """fairlearn's reductions and post-processing on the same split and features (logistic regression)."""
    import numpy as np

    def columns(split: str) -> list[np.ndarray]:
        return [np.asarray(list(data[split][c])) for c in ("features", "label", attribute)]

    return _peer_result(name, *columns("train"), *columns("test"), seed)


def _peer_result(
    name: str,
    x_fit: Any,
    y_fit: Any,
    s_fit: Any,
    x_test: Any,
    y_test: Any,
    s_test: Any,
    seed: int,
    prefit: bool = False,
) -> dict[str, float]:
    """Fit fairlearn's ``name`` (ExponentiatedGradient over logistic regression, or ThresholdOptimizer) on
    (x_fit, y_fit, s_fit) and score its test decisions. ``prefit``: x is a column of a fitted model's
    positive-class scores, which ThresholdOptimizer thresholds per group."""
    import numpy as np
    import torch
    from fairlearn.postprocessing import ThresholdOptimizer
    from fairlearn.reductions import DemographicParity, EqualizedOdds, ExponentiatedGradient
    from sklearn.linear_model import LogisticRegression

    from fairtune.metrics import GroupStats

    constraint = DemographicParity() if name.endswith("_dp") else EqualizedOdds()
    base = _score_column(x_fit, y_fit) if prefit else LogisticRegression(max_iter=1000)
    if name.startswith("expgrad"):
        model = ExponentiatedGradient(base, constraints=constraint)
        model.fit(x_fit, y_fit, sensitive_features=s_fit)
        preds = model.predict(x_test, random_state=seed)
    else:
        kind = "demographic_parity" if name.endswith("_dp") else "equalized_odds"
        model = ThresholdOptimizer(
            estimator=base, constraints=kind, predict_method="predict_proba", prefit=prefit
        )
        model.fit(x_fit, y_fit, sensitive_features=s_fit)
        preds = model.predict(x_test, sensitive_features=s_test, random_state=seed)
    names = sorted(set(s_test))
    ids = np.array([names.index(v) for v in s_test])
    stats = GroupStats(2, len(names), bootstrap_samples=0)
    stats.update(
        torch.as_tensor(np.asarray(y_test)),
        torch.as_tensor(ids),
        preds=torch.as_tensor(np.asarray(preds, dtype=int)),
    )
    return _headline(stats.compute(names))


def _score_column(x: Any, y: Any) -> Any:
    """A fitted binary sklearn classifier whose one input column is its own positive-class score:
    (N, 1) -> probabilities (N, 2), so ThresholdOptimizer(prefit=True) thresholds a model's scores."""
    import numpy as np
    from sklearn.base import BaseEstimator, ClassifierMixin

    class ScoreColumn(ClassifierMixin, BaseEstimator):
        def fit(self, x: Any, y: Any) -> ScoreColumn:
            self.classes_ = np.array([0, 1])
            return self

        def predict_proba(self, x: Any) -> Any:
            score = np.asarray(x, dtype=float)[:, 0]
            return np.column_stack([1 - score, score])

        def predict(self, x: Any) -> Any:
            return (self.predict_proba(x)[:, 1] >= 0.5).astype(int)

    return ScoreColumn().fit(x, y)


# ----- the suite --------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--suite", required=True)
    parser.add_argument("--limit", type=int, default=None, help="run at most this many pending runs")
    parser.add_argument("--results", default=None, help="results file (default: the suite's)")
    opts = parser.parse_args(argv)
    import logging

    library_logger = logging.getLogger("fairtune")
    level = library_logger.level
    library_logger.setLevel(logging.ERROR)  # small-group warnings would drown the progress bar
    try:
        run_suite(opts)
    finally:
        library_logger.setLevel(level)
    from fairtune.pipeline import shutdown_distributed

    shutdown_distributed()


def run_suite(opts: argparse.Namespace) -> None:
    from tqdm.auto import tqdm

    try:
        suite = load_suite(opts.suite)
    except ValueError as err:
        raise SystemExit(f"run.py: {err}") from None
    results = opts.results or suite["results"]
    results = results if os.path.isabs(results) else str(REPO / results)
    os.makedirs(os.path.dirname(results), exist_ok=True)
    done = done_keys(results)
    pending = [r for r in expand(suite) if run_key(r) not in done][: opts.limit]
    # Under `accelerate launch` or `torchrun` every process runs every run (Trainer spreads each run over
    # the processes); only rank 0 reports and appends rows. The launcher's environment says which rank this
    # is: asking accelerate here, before Trainer sets up the process group, would see a single process on CPU.
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    is_main = rank == 0
    if is_main:
        print(f"{suite['name']}: {len(pending)} run(s) to do, {len(done)} already in {results}")
    info = machine() | {"processes": world}
    for run in tqdm(pending, desc=suite["name"], unit="run", disable=not is_main):
        spec = suite["datasets"][run["dataset"]]
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as workdir:
            runner = {"tabular": run_tabular, "text": run_text, "lm": run_lm}[spec["kind"]]
            metrics = runner(spec, run, workdir)
        row = {
            **run,
            **metrics,
            "suite": suite["name"],
            "wall_time_s": round(time.perf_counter() - start, 2),
            "machine": info,
            "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        if is_main:
            with open(results, "a") as f:  # one line per run, written at once: a kill loses at most one run
                f.write(json.dumps(row) + "\n")
        if world > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.barrier()  # the next run's skip check must see this row on every rank


if __name__ == "__main__":
    main()
