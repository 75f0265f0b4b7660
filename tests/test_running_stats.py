"""Running (EMA / windowed) group statistics in rate penalties: the estimator, its gradient, its state.

* the value is the spread of rates of (past sums, detached) + (this batch's sums), for EMA and window;
* only the current batch carries the gradient, and with ``rescale`` the gradient has the batch estimator's
  scale (equal to it when past and batch rates agree);
* no update under ``no_grad`` (evaluation), options of another mode refused, shape changes refused;
* the state goes through ``Mitigations.state_dict`` / ``torch.save`` / ``load_state_dict`` and a run resumed
  from a checkpoint continues identically;
* effect: on a stream of batches of 8 from 16 groups with a planted gap, the EMA estimate of the DP gap
  varies far less across batches, and lies closer to the full-data gap, than the batch estimate.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import MLP, biased_tabular, fair_args

import fairtune.mitigation as M
from fairtune import FairTrainer
from fairtune.mitigation.combined import Mitigations
from fairtune.mitigation.penalties import (
    ERR_MOMENTUM,
    ERR_RUNNING,
    ERR_RUNNING_OPTION,
    ERR_RUNNING_SHAPE,
    ERR_RUNNING_STATE,
    ERR_WINDOW,
    RUNNING_MODES,
    PenaltyBatch,
    RunningSums,
    group_sums,
    rates_from_sums,
    spread,
)
from fairtune.trainer import MITIGATION_STATE_FILE

RATE_PENALTIES = [M.DemographicParity, M.EqualOpportunity, M.EqualizedOdds, M.LossParity]


def make_batch(seed: int, n: int = 8, num_groups: int = 4, requires_grad: bool = True) -> PenaltyBatch:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, 2, generator=gen).requires_grad_(requires_grad)
    labels = torch.randint(0, 2, (n,), generator=gen)
    groups = torch.randint(0, num_groups, (n,), generator=gen)
    losses = F.cross_entropy(logits, labels, reduction="none")
    return PenaltyBatch(logits, labels, groups, num_groups, losses)


def sums_of(penalty: M.RatePenalty, batch: PenaltyBatch) -> torch.Tensor:
    """(2, G, K) detached sums of one batch, as the penalty forms them."""
    with torch.no_grad():
        return torch.stack(group_sums(*penalty.statistic(batch), batch.membership))


def value_of(sums: torch.Tensor, how: str = "max_gap") -> float:
    return float(spread(*rates_from_sums(sums[0], sums[1]), how))


@pytest.mark.parametrize("cls", RATE_PENALTIES)
@pytest.mark.parametrize("how", ["max_gap", "mean_abs_dev", "l2_dev"])
def test_ema_value_is_the_spread_of_discounted_past_plus_batch(cls, how):
    penalty = cls(spread=how, running="ema", momentum=0.8)
    past = None
    for seed in range(5):
        batch = make_batch(seed)
        current = sums_of(penalty, batch)
        expected = current if past is None else 0.8 * past + current
        assert penalty(batch).item() == pytest.approx(value_of(expected, how), rel=1e-5, abs=1e-7)
        past = expected
    torch.testing.assert_close(penalty.running.past, past)


def test_window_value_sums_the_last_window_batches():
    penalty = M.DemographicParity(running="window", window=2)
    history = []
    for seed in range(6):
        batch = make_batch(seed)
        current = sums_of(penalty, batch)
        expected = sum(history[-2:], torch.zeros_like(current)) + current
        assert penalty(batch).item() == pytest.approx(value_of(expected), rel=1e-5, abs=1e-7)
        history.append(current)
    assert len(penalty.running.history) == 2 and penalty.running.updates == 6


def test_only_the_current_batch_carries_the_gradient():
    penalty = M.DemographicParity(running="ema")
    first, second = make_batch(0), make_batch(1)
    penalty(first)
    penalty(second).backward()
    assert first.logits.grad is None  # the past is detached
    assert second.logits.grad is not None and second.logits.grad.abs().sum() > 0


@pytest.mark.parametrize("how", ["max_gap", "mean_abs_dev", "l2_dev"])
def test_rescaled_gradient_equals_the_batch_gradient_when_past_and_batch_agree(how):
    # The same batch twice: past rates = batch rates, so the rescaled gradient is the batch estimator's, and
    # the plain gradient of num_hat / den_hat is 1 / (1 + m) of it (den_hat = (1 + m) den_batch).
    m = 0.9
    plain = M.DemographicParity(spread=how)
    rescaled = M.DemographicParity(spread=how, running="ema", momentum=m)
    unscaled = M.DemographicParity(spread=how, running="ema", momentum=m, rescale=False)
    grads = []
    for penalty in (plain, rescaled, unscaled):
        if penalty.running is not None:
            penalty(make_batch(0))  # the past: the batch itself
        batch = make_batch(0)
        value = penalty(batch)
        assert value.item() == pytest.approx(plain(make_batch(0)).item(), rel=1e-5, abs=1e-6)
        value.backward()
        grads.append(batch.logits.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grads[2], grads[0] / (1 + m), rtol=1e-5, atol=1e-7)


def test_no_update_under_no_grad():
    penalty = M.DemographicParity(running="ema")
    penalty(make_batch(0))
    before = penalty.running.state_dict()
    with torch.no_grad():
        penalty(make_batch(1, requires_grad=False))
    after = penalty.running.state_dict()
    assert after["updates"] == before["updates"] == 1
    torch.testing.assert_close(after["past"], before["past"])


def test_bad_options_are_refused_with_a_message():
    with pytest.raises(ValueError) as err:
        M.DemographicParity(running="sliding")
    assert str(err.value) == ERR_RUNNING.format(
        name="demographic_parity", valid=", ".join(RUNNING_MODES), running="sliding"
    )
    with pytest.raises(ValueError) as err:
        M.DemographicParity(momentum=0.5)  # accepted and ignored otherwise
    assert str(err.value) == ERR_RUNNING_OPTION.format(
        option="momentum", name="demographic_parity", mode="ema", running="none"
    )
    with pytest.raises(ValueError) as err:
        M.EqualOpportunity(running="ema", window=4)
    assert str(err.value) == ERR_RUNNING_OPTION.format(
        option="window", name="equal_opportunity", mode="window", running="ema"
    )
    with pytest.raises(ValueError) as err:
        M.DemographicParity(running="ema", momentum=1.0)
    assert str(err.value) == ERR_MOMENTUM.format(name="demographic_parity", momentum=1.0)
    with pytest.raises(ValueError) as err:
        M.DemographicParity(running="window", window=0)
    assert str(err.value) == ERR_WINDOW.format(name="demographic_parity", window=0)
    # MinDiff has no sums to run: the registry names the option it does not take.
    with pytest.raises(ValueError, match="running"):
        M.MinDiff.from_args(fair_args_like(penalty_options={"running": "ema"}))


def fair_args_like(**overrides):
    from fairtune import FairTrainingArguments

    return FairTrainingArguments(
        output_dir="unused", group_by="sex", report_to="none", use_cpu=True, penalty="mindiff", **overrides
    )


def test_yaml_penalty_options_build_running_statistics():
    args = fair_args_like(penalty_options={"running": "ema", "momentum": 0.75})
    args.penalty = "demographic_parity"
    penalty = Mitigations.from_args(args).penalties[0]
    assert penalty.running.mode == "ema" and penalty.running.momentum == 0.75
    # On the command line the mapping is JSON.
    args = fair_args_like(penalty_options='{"running": "window", "window": 3}')
    args.penalty = "loss_parity"
    assert Mitigations.from_args(args).penalties[0].running.window == 3


def test_a_change_of_shape_is_refused():
    penalty = M.DemographicParity(running="ema")
    penalty(make_batch(0, num_groups=4))
    with pytest.raises(ValueError) as err:
        penalty(make_batch(1, num_groups=5))
    assert str(err.value) == ERR_RUNNING_SHAPE.format(
        name="demographic_parity", have=(2, 4, 1), got=(2, 5, 1)
    )
    penalty.reset_state()
    penalty(make_batch(1, num_groups=5))  # fresh after a reset


@pytest.mark.parametrize("mode", ["ema", "window"])
def test_state_round_trip_continues_identically(tmp_path, mode):
    def fresh():
        options = {"momentum": 0.7} if mode == "ema" else {"window": 3}
        return Mitigations([M.DemographicParity(running=mode, **options), M.EqualizedOdds(running=mode)])

    original = fresh()
    for seed in range(4):
        original.extra_loss(None, make_batch(seed), step=seed, log=M.TermLog())
    assert original.stateful_parts() == ["penalty/demographic_parity", "penalty/equalized_odds"]
    torch.save(original.state_dict(), tmp_path / "state.pt")
    restored = fresh()
    assert restored.load_state_dict(torch.load(tmp_path / "state.pt")) == []
    for seed in range(4, 9):
        a = original.extra_loss(None, make_batch(seed), step=seed, log=M.TermLog())
        b = restored.extra_loss(None, make_batch(seed), step=seed, log=M.TermLog())
        assert a.item() == b.item()
    # A fresh object (nothing restored) continues differently: the state matters.
    other = fresh()
    assert (
        other.extra_loss(None, make_batch(9), 0, M.TermLog()).item()
        != original.extra_loss(None, make_batch(9), 0, M.TermLog()).item()
    )


def test_state_of_another_mode_is_refused():
    ema = RunningSums("ema", name="demographic_parity")
    ema.update(torch.ones(2, 3, 1))
    with pytest.raises(ValueError) as err:
        RunningSums("window", name="demographic_parity").load_state_dict(ema.state_dict())
    problem = "saved with running: 'ema', now 'window'"
    assert str(err.value) == ERR_RUNNING_STATE.format(name="demographic_parity", problem=problem)


def test_running_statistics_resume_exactly_from_a_checkpoint(tmp_path):
    def make(out):
        torch.manual_seed(0)
        args = fair_args(
            tmp_path,
            output_dir=str(tmp_path / out),
            num_train_epochs=2,
            save_strategy="steps",
            save_steps=7,
            per_device_train_batch_size=8,
            penalty="demographic_parity",
            penalty_options={"running": "ema", "momentum": 0.9},
        )
        return FairTrainer(MLP(), args, train_dataset=biased_tabular(96))

    full = make("full")
    full.train()
    checkpoint = tmp_path / "full" / "checkpoint-7"
    saved = torch.load(checkpoint / MITIGATION_STATE_FILE)
    assert saved["penalty/demographic_parity"]["running"]["updates"] == 7
    resumed = make("resumed")
    resumed.train(resume_from_checkpoint=str(checkpoint))
    a, b = full.mitigations.penalties[0].running, resumed.mitigations.penalties[0].running
    assert a.updates == b.updates == 24
    torch.testing.assert_close(a.past, b.past)
    for p, q in zip(resumed.model.parameters(), full.model.parameters(), strict=True):
        torch.testing.assert_close(p, q)
    # Evaluation does not move the running sums.
    full.evaluate(biased_tabular(64, seed=1))
    assert full.mitigations.penalties[0].running.updates == 24


def test_ema_estimate_is_steadier_and_closer_to_the_full_data_gap():
    # 16 groups, batches of 8, a fixed model: positive rate of group g is 0.2 + 0.04 g (DP gap 0.6).
    num_groups, n = 16, 8
    gen = torch.Generator().manual_seed(0)
    total = 4000
    groups = torch.randint(0, num_groups, (total,), generator=gen)
    p = 0.2 + 0.04 * groups.float()
    logits = torch.stack([torch.zeros(total), torch.log(p / (1 - p))], 1)
    labels = torch.zeros(total, dtype=torch.long)
    losses = torch.zeros(total)
    full = float(M.DemographicParity()(PenaltyBatch(logits, labels, groups, num_groups, losses)))
    estimates = {"batch": [], "ema": []}
    ema = M.DemographicParity(running="ema", momentum=0.95)
    plain = M.DemographicParity()
    for start in range(0, total, n):
        rows = slice(start, start + n)
        batch = PenaltyBatch(
            logits[rows].requires_grad_(), labels[rows], groups[rows], num_groups, losses[rows]
        )
        estimates["batch"].append(plain(batch).item())
        estimates["ema"].append(ema(batch).item())
    batch_est = torch.tensor(estimates["batch"][100:])
    ema_est = torch.tensor(estimates["ema"][100:])  # after the EMA has filled
    assert ema_est.var() < 0.1 * batch_est.var()
    assert (ema_est - full).abs().mean() < 0.5 * (batch_est - full).abs().mean()


@pytest.mark.slow  # two torchrun processes, about 20 s
def test_running_state_is_identical_on_two_gloo_processes_and_equals_one_process(tmp_path):
    import json
    import os
    import subprocess
    from pathlib import Path

    from dist_running import run
    from test_distributed import _free_port, _torchrun

    root = Path(__file__).resolve().parent.parent
    cmd = [*_torchrun(), "--nnodes", "1", "--nproc_per_node", "2", "--master_addr", "127.0.0.1"]
    cmd += [
        "--master_port",
        str(_free_port()),
        str(root / "tests" / "dist_running.py"),
        str(tmp_path / "out"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"out.rank{r}.json").read_text()) for r in range(2)]
    single = run(slice(None), None)  # one process, the whole global batches
    for name in ("ema", "window"):
        assert ranks[0][name]["past"] == ranks[1][name]["past"]  # bit-identical on both ranks
        torch.testing.assert_close(torch.tensor(ranks[0][name]["past"]), torch.tensor(single[name]["past"]))
        for rank in ranks:
            assert rank[name]["values"] == pytest.approx(single[name]["values"], rel=1e-5, abs=1e-7)
            lo, hi = rank["rows"]
            for got, full in zip(rank[name]["grads"], single[name]["grads"], strict=True):
                # The backward of the cross-process sum: W = 2 times the single-process gradient of its rows.
                torch.testing.assert_close(
                    torch.tensor(got), 2 * torch.tensor(full)[lo:hi], rtol=1e-5, atol=1e-7
                )
