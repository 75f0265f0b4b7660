"""Proxy detection in the data audit: AUC and NMI against scikit-learn, a planted proxy ranked first, a
column of unique ids not mistaken for one, words of a group found, and the quickstart's Adult fields."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fairtune.audit import audit_dataset, render_audit_markdown, write_audit
from fairtune.proxies import auc_score, column_proxy, detect_proxies, normalized_mutual_information


def test_auc_and_nmi_equal_scikit_learn_with_ties():
    from sklearn.metrics import normalized_mutual_info_score, roc_auc_score

    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 500).astype(float)  # many ties
    positive = rng.random(500) < 0.3 + 0.1 * scores
    assert auc_score(scores, positive) == pytest.approx(roc_auc_score(positive, scores), abs=1e-12)
    x, a = rng.integers(0, 6, 800), rng.integers(0, 3, 800)
    a[:300] = x[:300] % 3  # some dependence
    assert normalized_mutual_information(x, a) == pytest.approx(normalized_mutual_info_score(a, x), abs=1e-12)
    assert np.isnan(auc_score(scores, np.zeros(500, bool)))


def _planted(n=2_000, seed=0):
    rng = np.random.default_rng(seed)
    sex = rng.choice(["F", "M"], n)
    male = sex == "M"
    role = np.where(
        rng.random(n) < 0.9, np.where(male, "husband", "wife"), rng.choice(["husband", "wife"], n)
    )
    return {
        "sex": sex.tolist(),
        "role": role.tolist(),  # a strong proxy (90% agreement)
        "hours": (40 + 5 * male + rng.normal(0, 8, n)).round().tolist(),  # a weaker numeric one
        "noise": rng.normal(size=n).tolist(),
        "row_id": [f"id{i}" for i in range(n)],  # unique per row: predicts nothing
        "label": rng.integers(0, 2, n).tolist(),
        "text": [
            f"{'engineer' if m and rng.random() < 0.5 else 'clerk'} who likes {rng.choice(['tea', 'coffee'])}"
            + (" she" if not m else "")
            for m in male
        ],
    }


def test_a_planted_proxy_ranks_first_and_unique_ids_score_chance():
    data = _planted()
    found = detect_proxies(data, ["sex"], text_column="text", exclude=["label"], identity_terms=["she", "he"])
    ranked = [c["column"] for c in found["sex"]["columns"]]
    assert ranked[:2] == ["role", "hours"] and "text" not in ranked and "label" not in ranked
    by_name = {c["column"]: c for c in found["sex"]["columns"]}
    assert by_name["role"]["auc"] > 0.9 and by_name["role"]["kind"] == "categorical"
    assert 0.6 < by_name["hours"]["auc"] < 0.8 and by_name["hours"]["kind"] == "numeric"
    # In-sample group shares would give unique ids an AUC of 1; cross-fitting gives chance.
    assert abs(by_name["row_id"]["auc"] - 0.5) < 0.05 and abs(by_name["noise"]["auc"] - 0.5) < 0.05
    words = {g: [t["token"] for t in tokens] for g, tokens in found["sex"]["tokens"].items()}
    assert words["M"][0] == "engineer" and words["F"][:2] == ["she", "clerk"]
    she = found["sex"]["tokens"]["F"][0]
    assert she["identity_term"] and not found["sex"]["tokens"]["M"][0]["identity_term"]
    assert "tea" not in words["M"][:1] and "coffee" not in words["F"][:2]


def test_multi_group_auc_weights_groups_by_size():
    rng = np.random.default_rng(1)
    groups = rng.choice(3, 3_000, p=[0.6, 0.39, 0.01])
    x = np.where(groups == 0, 1.0, 0.0) + rng.normal(0, 0.5, 3_000)
    result = column_proxy(x.tolist(), groups, 3)
    from sklearn.metrics import roc_auc_score

    per_group = [roc_auc_score(groups == g, x) for g in range(3)]
    expected = np.average([max(a, 1 - a) for a in per_group], weights=np.bincount(groups))
    assert result["auc"] == pytest.approx(expected, abs=1e-12)


def test_audit_reports_proxies_in_json_markdown_and_a_plot(tmp_path):
    import datasets

    data = _planted(600)
    audit = audit_dataset(
        datasets.Dataset.from_dict(data), ["sex"], text_column="text", identity_terms=["she", "he"]
    )
    assert audit["proxies"]["sex"]["columns"][0]["column"] == "role"
    text = render_audit_markdown(audit)
    assert "## Proxies of `sex`" in text and "| role | categorical |" in text and "she* (" in text
    paths = write_audit(audit, str(tmp_path))
    assert str(tmp_path / "data_audit_proxies_sex.png") in paths
    saved = json.loads((tmp_path / "data_audit.json").read_text())
    assert saved["proxies"]["sex"]["columns"][0]["column"] == "role"
    # A single-valued attribute has no proxies to report (and is no error).
    one = datasets.Dataset.from_dict({**data, "sex": ["F"] * 600})
    assert "sex" not in audit_dataset(one, ["sex"])["proxies"]
    with pytest.raises(ValueError, match="text_column"):
        audit_dataset(datasets.Dataset.from_dict(data), ["sex"], text_column="missing")


def test_the_quickstart_audit_names_the_adult_fields_that_stand_in_for_sex():
    from fairtune.data.adult import load_adult

    train = load_adult()["train"].select(range(2_000))
    proxies = audit_dataset(train, ["sex"], text_column="text", identity_terms=["man", "woman"])["proxies"]
    ranked = [c["column"] for c in proxies["sex"]["columns"]]
    assert ranked[0] == "relationship" and set(ranked[1:3]) == {"marital_status", "occupation"}
    assert proxies["sex"]["columns"][0]["auc"] > 0.85
    assert [t["token"] for t in proxies["sex"]["tokens"]["Female"][:1]] == ["woman"]


def test_a_text_column_named_on_purpose_must_exist():
    import datasets

    from fairtune.audit import proxy_options
    from fairtune.config import DataArguments

    data = datasets.Dataset.from_dict(_planted(50))
    assert proxy_options(data, DataArguments())["text_column"] == "text"
    tabular = data.remove_columns("text")
    assert proxy_options(tabular, DataArguments())["text_column"] is None  # the default, absent: no words
    with pytest.raises(ValueError, match="no column 'review'"):
        proxy_options(data, DataArguments(text_column="review"))
