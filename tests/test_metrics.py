"""Evaluation metrics and markdown reports on hand-computed toy cases (arithmetic in comments)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import f1_score, roc_curve

from oltr_contract.scores import energy, max_softmax
from training.metrics import (
    ScoreCollector,
    ScoredSet,
    accept_rate,
    auroc,
    calibrate_threshold,
    closed_set_accuracy,
    evaluation_report,
    f_measure,
    fpr_at_tpr,
    macro_f1,
    open_set_accuracy,
    shot_groups,
)
from training.report import markdown_comparison, markdown_table, pct

# --------------------------------------------------------------------------- shot groups


def test_shot_groups_at_the_boundaries() -> None:
    # many: > 100 (100 itself is medium); few: < 20 (20 itself is medium).
    counts = [101, 100, 21, 20, 19, 0]
    assert shot_groups(counts) == ["many", "medium", "medium", "medium", "few", "few"]
    assert shot_groups([11, 10, 5, 4], many=10, few=5) == ["many", "medium", "medium", "few"]
    with pytest.raises(ValueError, match="few-shot threshold"):
        shot_groups([1], many=5, few=10)


# --------------------------------------------------------------------------- closed set


def test_closed_set_accuracy_three_classes() -> None:
    # counts 150 / 50 / 5 -> many / medium / few.
    labels = [0, 0, 0, 0, 1, 1, 2, 2, 2]
    preds = [0, 0, 0, 1, 1, 0, 2, 0, 0]
    acc = closed_set_accuracy(preds, labels, [150, 50, 5])
    # class 0: 3/4, class 1: 1/2, class 2: 1/3; overall (3 + 1 + 1) / 9 = 5/9.
    assert acc["per_class"] == pytest.approx([3 / 4, 1 / 2, 1 / 3])
    assert acc["overall"] == pytest.approx(5 / 9)
    assert (acc["many"], acc["medium"], acc["few"]) == pytest.approx((3 / 4, 1 / 2, 1 / 3))
    assert acc["num_samples"] == 9


def test_group_accuracy_is_mean_of_classes_not_of_samples() -> None:
    # counts 200 / 150 / 10 -> many, many, few; medium is empty.
    labels = [0, 0, 1, 1, 1, 1, 2]
    preds = [0, 1, 1, 1, 1, 0, 0]
    acc = closed_set_accuracy(preds, labels, [200, 150, 10])
    # class 0: 1/2, class 1: 3/4 -> many = (1/2 + 3/4) / 2 = 0.625 (the sample mean 4/6 is not it)
    assert acc["many"] == pytest.approx(0.625)
    assert acc["medium"] is None
    assert acc["few"] == 0.0
    assert acc["overall"] == pytest.approx(4 / 7)  # (1 + 3 + 0) / 7


def test_class_without_test_images_is_left_out() -> None:
    # class 1 (many-shot) has no test image: per_class None, many = class 0 only = 1/2.
    acc = closed_set_accuracy([0, 1], [0, 0], [500, 300])
    assert acc["per_class"] == [0.5, None]
    assert acc["many"] == 0.5


def test_closed_set_rejects_bad_labels() -> None:
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.1"):
        closed_set_accuracy([0, 1], [0, -1], [10, 10])
    with pytest.raises(ValueError, match="differ in length"):
        closed_set_accuracy([0], [0, 1], [10, 10])


# --------------------------------------------------------------------------- open-set decisions

# Two known classes; -1 = open.       verdict under the official (post-2020) F-measure
OS_LABELS = [0, 0, 1, 1, 1, -1, -1, -1]
OS_PREDS = [0, 0, 0, 1, 1, 0, 1, 1]
OS_ACCEPTED = [1, 0, 1, 1, 1, 1, 0, 0]
# i0 known correct accepted  -> TP
# i1 known correct REJECTED  -> FP  (pre-2020 code ignored this one)
# i2 known wrong accepted    -> FP
# i3, i4 known correct acc.  -> TP, TP
# i5 open accepted           -> FN
# i6, i7 open rejected       -> not counted


def test_f_measure_counts_rejected_knowns_as_false_positives() -> None:
    f = f_measure(OS_PREDS, OS_LABELS, OS_ACCEPTED)
    assert (f["tp"], f["fp"], f["fn"]) == (3, 2, 1)
    # P = 3/5 = 0.6, R = 3/4 = 0.75, F = 2 * 0.6 * 0.75 / 1.35 = 0.9 / 1.35 = 2/3
    assert f["precision"] == pytest.approx(0.6)
    assert f["recall"] == pytest.approx(0.75)
    assert f["f_measure"] == pytest.approx(2 / 3)  # pre-fix (FP = 1) would give 0.75


def test_f_measure_zero_guards() -> None:
    # Every known rejected, no open accepted: TP = 0, FP = 2, FN = 0 -> P = 0, R = 0/0 -> 0, F = 0.
    f = f_measure([0, 1, 0], [0, 1, -1], [0, 0, 0])
    assert (f["precision"], f["recall"], f["f_measure"]) == (0.0, 0.0, 0.0)


def test_open_set_accuracy() -> None:
    # known right (correct and accepted): i0, i3, i4 = 3; open right (rejected): i6, i7 = 2.
    assert open_set_accuracy(OS_PREDS, OS_LABELS, OS_ACCEPTED) == pytest.approx(5 / 8)


def test_macro_f1_over_known_classes_and_unknown() -> None:
    # decisions d = [0, U, 0, 1, 1, 0, U, U]; labels = [0, 0, 1, 1, 1, U, U, U]
    # class 0: TP i0 = 1, FP i2, i5 = 2, FN i1 = 1 -> 2*1 / (2 + 2 + 1) = 2/5
    # class 1: TP i3, i4 = 2, FP 0, FN i2 = 1      -> 4 / (4 + 0 + 1) = 4/5
    # unknown: TP i6, i7 = 2, FP i1 = 1, FN i5 = 1 -> 4 / (4 + 1 + 1) = 2/3
    # mean = (6/15 + 12/15 + 10/15) / 3 = 28/45
    value = macro_f1(OS_PREDS, OS_LABELS, OS_ACCEPTED)
    assert value == pytest.approx(28 / 45)
    decided = np.where(np.asarray(OS_ACCEPTED, bool), OS_PREDS, -1)
    assert value == pytest.approx(f1_score(OS_LABELS, decided, average="macro"))


# --------------------------------------------------------------------------- ranking and thresholds


def test_auroc_without_ties() -> None:
    # 6 known/open pairs; known 0.4 < open 0.7 is the only one ranked wrong -> 5/6.
    assert auroc([0.9, 0.8, 0.4], [0.7, 0.3]) == pytest.approx(5 / 6)
    assert auroc([2.0, 3.0], [0.0, 1.0]) == 1.0
    assert auroc([0.0, 1.0], [2.0, 3.0]) == 0.0


def test_auroc_counts_ties_as_half() -> None:
    # known 0.9: beats 0.5 and 0.1 -> 2; known 0.5: ties 0.5 (1/2), beats 0.1 -> 1.5;
    # known 0.2: loses to 0.5, beats 0.1 -> 1.  (2 + 1.5 + 1) / 6 = 0.75
    assert auroc([0.9, 0.5, 0.2], [0.5, 0.1]) == pytest.approx(0.75)
    assert auroc([1.0, 1.0], [1.0, 1.0, 1.0]) == pytest.approx(0.5)


def test_auroc_refuses_empty_or_nan() -> None:
    with pytest.raises(ValueError, match="open_scores must be a non-empty"):
        auroc([1.0], [])
    with pytest.raises(ValueError, match="known_scores contains 1 non-finite"):
        auroc([1.0, np.nan], [0.0])


def test_fpr_at_95_tpr_by_hand() -> None:
    known = np.arange(1.0, 21.0)  # 1, 2, ..., 20
    open_ = [0.5, 1.0, 1.5, 2.5, 10.0, 25.0]
    # k = ceil(0.95 * 20) = 19 -> threshold = 19th largest known = 2 (TPR = 19/20 exactly);
    # open >= 2: 2.5, 10, 25 -> FPR = 3/6.
    assert fpr_at_tpr(known, open_) == pytest.approx(0.5)
    # tpr 0.9: k = 18 -> threshold 3; open >= 3: 10, 25 -> 2/6.
    assert fpr_at_tpr(known, open_, tpr=0.9) == pytest.approx(1 / 3)
    # An open score tied with the threshold (2.0) is accepted: open [2.0, 1.0] -> 1/2.
    assert fpr_at_tpr(known, [2.0, 1.0]) == pytest.approx(0.5)
    # Same operating point as scikit-learn's ROC curve (first point with TPR >= 0.95).
    fpr, tpr, _ = roc_curve(np.r_[np.ones(20), np.zeros(6)], np.r_[known, open_])
    assert fpr_at_tpr(known, open_) == pytest.approx(fpr[np.argmax(tpr >= 0.95)])


def test_calibrate_threshold_rule() -> None:
    scores = [5.0, 1.0, 4.0, 2.0, 3.0]
    # target 0.6: k = ceil(0.6 * 5) = 3 -> 3rd largest = 3; accepts 3/5 exactly.
    assert calibrate_threshold(scores, 0.6) == 3.0
    # target 0.5: k = ceil(2.5) = 3 -> 3 (accepts 0.6; threshold 4 would accept only 0.4 < 0.5).
    assert calibrate_threshold(scores, 0.5) == 3.0
    assert calibrate_threshold(scores, 1.0) == 1.0
    # 0.7 * 10 = 7.000000000000001 in floating point; the rule still takes k = 7:
    # scores 1..10, 7th largest = 4, accepting 7/10.
    assert calibrate_threshold(np.arange(1.0, 11.0), 0.7) == 4.0
    # Ties: [1, 2, 2, 2, 3], target 0.4 -> k = 2 -> 2, which accepts 4/5 (all tied scores).
    t = calibrate_threshold([1.0, 2.0, 2.0, 2.0, 3.0], 0.4)
    assert t == 2.0
    assert accept_rate([1.0, 2.0, 2.0, 2.0, 3.0], t) == pytest.approx(0.8)
    with pytest.raises(ValueError, match="target_accept"):
        calibrate_threshold(scores, 0.0)


def test_accept_rate() -> None:
    assert accept_rate([1.0, 2.0, 3.0, 4.0], 2.5) == 0.5
    assert accept_rate([1.0, 2.0, 3.0, 4.0], 3.0) == 0.5  # score == threshold is accepted


# --------------------------------------------------------------------------- accumulation


def test_score_collector_accumulates_batches() -> None:
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(7, 4))
    labels = np.array([0, 1, 2, 3, 0, 1, -1])
    reach = rng.uniform(0.1, 5, size=7)
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    outputs = {"logits": logits, "probabilities": probs, "reachability": reach}
    collector = ScoreCollector()
    collector.update({k: v[:3] for k, v in outputs.items()}, labels[:3])
    collector.update({k: v[3:] for k, v in outputs.items()}, labels[3:])
    out = collector.compute()
    np.testing.assert_array_equal(out.preds, logits.argmax(1))
    np.testing.assert_array_equal(out.labels, labels)
    np.testing.assert_allclose(out.scores["reachability"], reach)
    np.testing.assert_allclose(out.scores["max_softmax"], max_softmax(probs))
    np.testing.assert_allclose(out.scores["energy"], energy(logits))
    collector.reset()
    with pytest.raises(ValueError, match="before any update"):
        collector.compute()


def test_score_collector_refuses_mixed_reach() -> None:
    plain_outputs = {"logits": np.zeros((2, 3)), "probabilities": np.full((2, 3), 1 / 3)}
    collector = ScoreCollector()
    collector.update({**plain_outputs, "reachability": np.ones(2)}, [0, 1])
    with pytest.raises(ValueError, match="every batch needs the same model outputs"):
        collector.update(plain_outputs, [0, 1])
    plain = ScoreCollector()
    plain.update(plain_outputs, [0, 1])
    assert set(plain.compute().scores) == {"max_softmax", "energy"}


# --------------------------------------------------------------------------- the report

# Two classes: train counts 150 (many) and 10 (few). Scores are given directly.
TEST_SET = ScoredSet(
    preds=np.array([0, 1, 1, 1]),
    labels=np.array([0, 0, 1, 1]),
    scores={"max_softmax": [0.9, 0.8, 0.7, 0.2], "energy": [4.0, 3.0, 2.0, 1.0]},
)
OPEN_SET = ScoredSet(
    preds=np.array([0, 1]),
    labels=np.array([-1, -1]),
    scores={"max_softmax": [0.75, 0.1], "energy": [10.0, 0.0]},
)
VAL_KNOWN = {"max_softmax": [0.9, 0.8, 0.6, 0.5], "energy": [4.0, 3.0, 2.0, 1.0]}
VAL_OPEN = {"max_softmax": [0.1, 0.7, 0.3, 0.55], "energy": [0.0, 0.0, 0.0, 9.0]}


def _report(**kwargs: object) -> dict:
    args = {"train_counts": [150, 10], "target_accept": 0.75, "unknown_score": "max_softmax"}
    args.update(kwargs)
    return evaluation_report(TEST_SET, {"noise": OPEN_SET}, VAL_KNOWN, val_open=VAL_OPEN, **args)


def test_evaluation_report_by_hand() -> None:
    report = _report()
    json.dumps(report)  # JSON-able
    closed = report["closed_set"]
    # class 0: 1/2, class 1: 2/2; overall 3/4; many = class 0, few = class 1, medium empty.
    assert (closed["overall"], closed["many"], closed["medium"], closed["few"]) == (
        0.75,
        0.5,
        None,
        1.0,
    )
    assert report["shot_groups"]["groups"] == ["many", "few"]
    ms = report["open_set"]["scores"]["max_softmax"]
    # val known [0.9, 0.8, 0.6, 0.5], target 0.75: k = 3 -> threshold 0.6, val accept 3/4;
    # val open [0.1, 0.7, 0.3, 0.55]: rejected (< 0.6) 0.1, 0.3, 0.55 -> 3/4.
    assert ms["threshold"] == 0.6
    assert (ms["val_known_accept"], ms["val_open_reject"]) == (0.75, 0.75)
    # test known [0.9, 0.8, 0.7, 0.2] >= 0.6 -> accepted T T T F -> 3/4.
    assert ms["test_known_accept"] == 0.75
    # rejected counts wrong: preds [0, 1, 1, -1] -> class 0: 1/2, class 1: 1/2.
    assert ms["top1_rejected_as_wrong"] == {"overall": 0.5, "many": 0.5, "medium": None, "few": 0.5}
    noise = ms["open_sets"]["noise"]
    # AUROC: known 0.9 and 0.8 beat both open (2 + 2), 0.7 and 0.2 beat only 0.1 (1 + 1) -> 6/8.
    assert noise["auroc"] == pytest.approx(0.75)
    # FPR@95: k = ceil(0.95 * 4) = 4 -> threshold 0.2; open >= 0.2: 0.75 -> 1/2.
    assert noise["fpr_at_95tpr"] == pytest.approx(0.5)
    # open [0.75, 0.1] at 0.6: accepted, rejected -> reject 1/2.
    assert noise["open_reject"] == 0.5
    # TP: i0, i2 = 2; FP: i1 (wrong), i3 (rejected) = 2; FN: open 0.75 accepted = 1.
    # P = 1/2, R = 2/3, F = 2 * (1/3) / (7/6) = 4/7.
    assert (noise["tp"], noise["fp"], noise["fn"]) == (2, 2, 1)
    assert noise["f_measure"] == pytest.approx(4 / 7)
    # right: known i0, i2; open 0.1 rejected -> 3/6.
    assert noise["open_set_accuracy"] == pytest.approx(0.5)
    # decisions [0, 1, 1, U, 0, U] vs labels [0, 0, 1, 1, U, U]: each of the three classes has
    # TP 1, FP 1, FN 1 -> F1 = 2 / 4 = 1/2; mean 1/2.
    assert noise["macro_f1"] == pytest.approx(0.5)
    # energy: known [4, 3, 2, 1] vs open [10, 0]: each known beats 0 but not 10 -> 4/8.
    assert report["open_set"]["scores"]["energy"]["open_sets"]["noise"]["auroc"] == 0.5
    assert report["open_set"]["decision"] == {
        "score": "max_softmax",
        "threshold": 0.6,
        "known_accept": 0.75,
        "open_reject": 0.75,
    }


def test_evaluation_report_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="unknown_score 'reachability' is not among"):
        _report(unknown_score="reachability")
    bad_open = ScoredSet(preds=[0], labels=[-1], scores={"max_softmax": [0.3]})
    with pytest.raises(ValueError, match=r"open set 'bad' lacks score\(s\) \['energy'\]"):
        evaluation_report(
            TEST_SET, {"bad": bad_open}, VAL_KNOWN, train_counts=[150, 10], unknown_score=None
        )
    report = _report(unknown_score=None)
    assert report["open_set"]["decision"] is None


def test_report_from_real_logits_includes_reachability() -> None:
    rng = np.random.default_rng(2)
    sets = {}
    for name, n, labels in (
        ("test", 40, rng.integers(0, 3, 40)),
        ("val", 30, None),
        ("open", 20, None),
    ):
        collector = ScoreCollector()
        lab = labels if labels is not None else np.full(n, -1 if name == "open" else 0)
        logits = rng.normal(size=(n, 3)) * 3
        probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        outputs = {"logits": logits, "probabilities": probs, "reachability": rng.uniform(0.5, 2, n)}
        collector.update(outputs, lab)
        sets[name] = collector.compute()
    report = evaluation_report(
        sets["test"],
        {"open": sets["open"]},
        sets["val"].scores,
        train_counts=[300, 40, 5],
        unknown_score="reachability",
    )
    assert list(report["open_set"]["scores"]) == ["reachability", "max_softmax", "energy"]
    assert report["open_set"]["decision"]["score"] == "reachability"
    # default target 0.95 of 30 val scores: k = ceil(28.5) = 29 -> accepts 29/30.
    assert report["open_set"]["decision"]["known_accept"] == pytest.approx(29 / 30)
    json.dumps(report)


# --------------------------------------------------------------------------- markdown


def test_pct_formatting() -> None:
    assert (pct(0.12345), pct(1.0), pct(0.0), pct(None)) == ("12.3", "100.0", "0.0", "n/a")


def test_markdown_table() -> None:
    text = markdown_table(_report())
    # many 50.0, medium n/a, few 100.0, overall 75.0; classes 1 / 0 / 1 / 2.
    assert "| top-1 (%) | 50.0 | n/a | 100.0 | 75.0 |" in text
    assert "| classes | 1 | 0 | 1 | 2 |" in text
    # max_softmax row: AUROC 75.0, FPR 50.0, threshold 0.6, known accept 75.0, open reject 50.0,
    # F 4/7 = 57.1, open-set acc. 50.0, macro-F1 50.0.
    assert (
        "| **max_softmax** (used) | noise | 75.0 | 50.0 | 0.6 | 75.0 | 50.0 | 57.1 | 50.0 | 50.0 |"
        in text
    )
    assert "thresholds accept 75.0% of known val images" in text


def test_markdown_comparison_marks_missing_scores() -> None:
    plain = _report()
    oltr = evaluation_report(
        ScoredSet(
            TEST_SET.preds, TEST_SET.labels, {**TEST_SET.scores, "reachability": [4, 3, 2, 1]}
        ),
        {
            "noise": ScoredSet(
                OPEN_SET.preds, OPEN_SET.labels, {**OPEN_SET.scores, "reachability": [0, 0]}
            )
        },
        {**VAL_KNOWN, "reachability": [4.0, 3.0, 2.0, 1.0]},
        train_counts=[150, 10],
        unknown_score="reachability",
    )
    text = markdown_comparison({"plain (stage 1)": plain, "OLTR (stage 2)": oltr})
    lines = text.splitlines()
    assert lines[0] == "| metric | plain (stage 1) | OLTR (stage 2) |"
    assert "| top-1 overall (%) | 75.0 | 75.0 |" in lines
    assert "| top-1 medium-shot (%) | n/a | n/a |" in lines
    # reachability: every known (>= 1) beats both open scores (0) -> AUROC 100.0; plain has none.
    assert "| AUROC reachability, noise (%) | n/a | 100.0 |" in lines
    assert "| F-measure max_softmax, noise (%) | 57.1 | " in text
    assert len([ln for ln in lines if ln.startswith("| AUROC")]) == 3  # one per score


def test_fit_combined_uses_each_parts_calibrated_threshold():
    from training.metrics import fit_combined

    val = {
        "max_softmax": np.arange(1, 11) / 10,  # 0.1 .. 1.0
        "reachability": np.arange(1.0, 11.0),  # 1 .. 10
        "energy": np.zeros(10),  # not a part: ignored
    }
    # target 0.9 of 10 -> k = 9 -> the 9th largest: 0.2 and 2.0
    assert fit_combined(val, 0.9) == pytest.approx({"max_softmax": 0.2, "reachability": 2.0})
