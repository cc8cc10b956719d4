"""Evaluation metrics and the few-shot Central Dogma task, against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bsm_ray.eval.metrics import accuracy, best_threshold, mcc, roc_auc, spearman


def test_metrics_against_hand_computed_values():
    # TP 2, TN 1, FP 1, FN 1: (2*1 - 1*1) / sqrt(3*3*2*2) = 1/6
    assert mcc([1, 1, 0, 0, 1], [1, 0, 0, 1, 1]) == pytest.approx(1 / 6)
    assert accuracy([1, 1, 0, 0, 1], [1, 0, 0, 1, 1]) == pytest.approx(0.6)
    # ranks of y with a tie: [1, 2, 3.5, 5, 3.5]; sum of rank products 8, variances 10 and 9.5
    assert spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(8 / math.sqrt(95))
    assert math.isnan(spearman([1, 2, 3], [4, 4, 4]))
    # positives 0.35, 0.8 against negatives 0.1, 0.4: 3 of 4 pairs ordered
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    # candidates -0.9, 0.225, 0.375, 0.6, 1.8 give accuracy 0.5, 0.75, 0.5, 0.75, 0.5
    assert best_threshold([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.225)


@pytest.fixture(scope="module")
def chloroplast_task():
    from bsm_ray.data.samples import sample_inputs
    from bsm_ray.eval.central_dogma import CentralDogmaConfig, build_task

    genbank = [p for p in sample_inputs()["genbank"] if "NC_000932" in p]
    return build_task(CentralDogmaConfig(genbank=genbank))


def test_central_dogma_task_from_the_chloroplast_record(chloroplast_task, tmp_path):
    from Bio.Seq import Seq

    from bsm_ray.eval.central_dogma import read_task, write_task

    rows, skipped = chloroplast_task
    # 85 CDS: the two trans-spliced rps12 parts have no single gene locus, one (the ACG-start
    # ndhD) has an annotated translation Biopython does not reproduce: counted, not dropped.
    assert skipped == {"trans_spliced_no_gene_dna": 2, "translation_not_checked": 1}
    assert len(rows) == 2 * 82
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    for pos, neg in zip(rows[::2], rows[1::2], strict=True):
        assert (pos["label"], neg["label"]) == (1, 0)
        assert pos["pair_id"] == neg["pair_id"] and pos["split"] == neg["split"]
        if neg["corruption"] == "protein_substitution":
            assert neg["dna"] == pos["dna"] and neg["protein"] != pos["protein"]
            assert len(neg["protein"]) == len(pos["protein"])
        else:
            assert neg["protein"] == pos["protein"] and neg["dna"] != pos["dna"]
            delta = len(neg["dna"]) - len(pos["dna"])
            assert delta == {"dna_substitution": 0, "dna_insertion": delta,
                             "dna_deletion": delta}[neg["corruption"]]  # fmt: skip
            assert (delta in (1, 2)) if neg["corruption"] == "dna_insertion" else True
            assert (delta in (-1, -2)) if neg["corruption"] == "dna_deletion" else True
    # the positives' CDS (inside the 100-nt flanks) translates to the protein
    one = next(r for r in rows if r["label"] == 1 and r["cds"] == "ArthCp002")  # psbA, - strand
    assert str(Seq(one["dna"][100:-100]).translate(table=11, cds=True)) == one["protein"]
    write_task(rows, tmp_path / "task.parquet")
    assert read_task(tmp_path / "task.parquet") == rows


def test_log_prob_sums_equal_a_direct_computation():
    """Batched, padded scoring equals summing log-softmax at the protein positions one example
    at a time; demonstrations come first, `<eos>`-separated."""
    import torch

    from bsm_ray.eval.central_dogma import build_example, score_examples
    from bsm_ray.models import build_model, get_preset
    from bsm_ray.tokenizers.char import EOS_ID, BsmCharTokenizer

    tok = BsmCharTokenizer()
    model = build_model(get_preset("bsm-tiny"), seed=0).eval()
    test = {"dna": "ATGAAATTTGGG", "protein": "MKFG"}
    demo = {"dna": "ATGCCC", "protein": "MP"}
    examples = [build_example(tok, test, []), build_example(tok, test, [demo]),
                build_example(tok, {"dna": "ATGTGA", "protein": "M"}, [demo, demo])]  # fmt: skip
    ids1, n1 = examples[1]
    assert tok.decode(ids1) == "<dna>ATGCCC<sep><protein>MP<eos><dna>ATGAAATTTGGG<sep><protein>MKFG"
    assert n1 == 4 and int(np.sum(ids1 == EOS_ID)) == 1
    got = score_examples(model, examples, batch_size=3)
    for (ids, n), score in zip(examples, got, strict=True):
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.from_numpy(ids[None].astype(np.int64))).logits[0],
                                     dim=-1)  # fmt: skip
        expected = sum(float(logp[t - 1, ids[t]]) for t in range(len(ids) - n, len(ids)))
        assert score == pytest.approx(expected, abs=1e-4)
    mean = score_examples(model, examples[:1], normalize=True)
    assert mean[0] == pytest.approx(got[0] / 4, abs=1e-5)


def test_few_shot_table_reports_every_k(chloroplast_task):
    """The evaluation runs for k = 0, 1, 2 on a small model: examples that do not fit the
    context are counted as skipped, and the table names every k and corruption kind."""
    from bsm_ray.eval.central_dogma import FewShotConfig, evaluate, format_results
    from bsm_ray.models import build_model, get_preset

    rows, _ = chloroplast_task
    short = [r for r in rows if len(r["dna"]) + len(r["protein"]) < 700]
    model = build_model(get_preset("bsm-tiny"), seed=0).eval()
    results = evaluate(model, short, FewShotConfig(shots=[0, 1, 2], max_context=1400))
    assert [r["k"] for r in results] == [0, 1, 2]
    for r in results:
        assert r["val_examples"] + r["test_examples"] + r["skipped"] == sum(
            x["split"] != "train" for x in short
        )
        assert 0.0 <= r["win_rate"] <= 1.0 and r["pairs"] > 0
    assert results[0]["skipped"] == 0 and results[2]["skipped"] >= results[1]["skipped"]
    table = format_results(results)
    assert "win rate" in table and "protein_substitution" in table
