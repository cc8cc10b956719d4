"""Evaluation metrics and the few-shot Central Dogma task, against hand-computed values."""

from __future__ import annotations

import json
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
    from bsm_ray.eval.central_dogma import CentralDogmaConfig, build_task
    from bsm_ray.ingest.samples import sample_inputs

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


def test_mutation_fitness_scores_and_errors(tmp_path):
    """Score = log p(mutant) - log p(wild type), computed directly; Spearman against fitness;
    bad rows are errors naming file, line and reason, or counted with on_invalid=skip."""
    import torch

    from bsm_ray.errors import InputError
    from bsm_ray.eval.fitness import FitnessConfig, apply_mutations, evaluate
    from bsm_ray.models import build_model, get_preset
    from bsm_ray.tokenizers.char import BsmCharTokenizer

    wt = "MKTAYIAKQR"
    assert apply_mutations(wt, "K2A:R10W") == "MATAYIAKQW"
    csv_path = tmp_path / "dms.csv"
    csv_path.write_text("mutant,DMS_score\nK2A,0.5\nT3P:Y5F,-1.0\nQ9E,2.0\nA4G,0.1\n")
    model = build_model(get_preset("bsm-tiny"), seed=1).eval()
    result = evaluate(model, FitnessConfig(variants_csv=str(csv_path), wild_type=wt))
    tok = BsmCharTokenizer()

    def logp(seq):
        ids = tok.encode("<protein>" + seq)
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.from_numpy(ids[None].astype(np.int64))).logits[0],
                                   dim=-1)  # fmt: skip
        return sum(float(lp[t - 1, ids[t]]) for t in range(1, len(ids)))

    for mutant, seq in [("K2A", "MATAYIAKQR"), ("T3P:Y5F", "MKPAFIAKQR"), ("Q9E", "MKTAYIAKER")]:
        assert result["scores"][mutant] == pytest.approx(logp(seq) - logp(wt), abs=1e-4)
    scores = [result["scores"][m] for m in ("K2A", "T3P:Y5F", "Q9E", "A4G")]
    assert result["spearman"] == pytest.approx(spearman(scores, [0.5, -1.0, 2.0, 0.1]))

    bad = tmp_path / "bad.csv"
    bad.write_text("mutant,DMS_score\nK2A,0.5\nM1A,x\nK3A,1.0\nA40G,1.0\nA4J,0.0\nQ9E,1.5\n")
    with pytest.raises(InputError, match=r"bad.csv: record line 3 \(M1A\): bad_fitness"):
        evaluate(model, FitnessConfig(variants_csv=str(bad), wild_type=wt))
    skipped = evaluate(model, FitnessConfig(variants_csv=str(bad), wild_type=wt,
                                            on_invalid="skip"))  # fmt: skip
    assert skipped["variants"] == 2
    assert skipped["skipped"] == {"bad_fitness": 1, "wild_type_mismatch": 1,
                                  "position_outside_wild_type": 1,
                                  "letter_outside_alphabet": 1}  # fmt: skip


def test_evaluate_job_runs_the_suite_and_logs_to_mlflow(dataset, chloroplast_task, tmp_path,
                                                        capsys):
    """jobs/evaluate.py on a saved model: every section, the tables printed, results.json and
    the Central Dogma plot on disk and on an MLflow run (the suite's temporary store)."""
    import importlib.util
    from pathlib import Path

    import yaml

    import mlflow
    from bsm_ray.eval.central_dogma import write_task
    from bsm_ray.models import build_model, get_preset
    from bsm_ray.train.export import save_hf

    root = Path(__file__).resolve().parents[1]
    save_hf(build_model(get_preset("bsm-tiny"), seed=0), "bsm-tiny", tmp_path / "model")
    rows, _ = chloroplast_task
    short = [r for r in rows if len(r["dna"]) + len(r["protein"]) < 600]
    write_task(short, tmp_path / "cd.parquet")
    (tmp_path / "dms.csv").write_text("mutant,DMS_score\nK2A,0.5\nT3P,-1.0\nQ9E,2.0\n")
    lines = ["sequence,label"] + [f"{'AC' * 20 if i % 2 else 'GT' * 20},{i % 2}" for i in range(40)]
    (tmp_path / "cls.csv").write_text("\n".join(lines) + "\n")
    config = {
        "model": str(tmp_path / "model"), "name": "suite", "output_dir": str(tmp_path / "out"),
        "perplexity": {"enabled": True, "config": {"dataset": dataset, "rows_per_source": 4}},
        "central_dogma": {"enabled": True, "task": str(tmp_path / "cd.parquet"),
                          "few_shot": {"shots": [0, 1], "max_context": 1400}},
        "fitness": [{"name": "toy", "config": {"variants_csv": str(tmp_path / "dms.csv"),
                                               "wild_type": "MKTAYIAKQR"}}],
        "finetune": [{"name": "toy", "config": {"train_csv": str(tmp_path / "cls.csv"),
                                                "test_csv": str(tmp_path / "cls.csv")}}],
    }  # fmt: skip
    (tmp_path / "eval.yaml").write_text(yaml.safe_dump(config))
    # the job's own entry point, in this process (the CLI plumbing is shared by every job)
    spec = importlib.util.spec_from_file_location("evaluate_job", root / "jobs" / "evaluate.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    assert job.run_job(job.main, job.EvaluateConfig, "evaluate",
                       ["--config", str(tmp_path / "eval.yaml")]) == 0  # fmt: skip
    stdout = capsys.readouterr().out
    for section in ("== perplexity ==", "== central_dogma ==", "== fitness ==", "== finetune =="):
        assert section in stdout
    out = tmp_path / "out" / "suite"
    report = json.loads((out / "results.json").read_text())
    metrics = report["metrics"]
    assert {"eval/ppl", "central_dogma/k0/win_rate", "central_dogma/k1/pairs",
            "fitness/toy/spearman", "finetune/toy/test/mcc/mean"} <= set(metrics)  # fmt: skip
    assert (out / "central_dogma.png").stat().st_size > 0
    run_id = stdout.strip().rsplit("MLflow run ", 1)[1].split()[0]
    run = mlflow.MlflowClient().get_run(run_id)
    assert run.data.metrics["eval/ppl"] == pytest.approx(metrics["eval/ppl"])
    assert run.data.tags["bsm_ray.eval_model"] == str(tmp_path / "model")
    names = {a.path for a in mlflow.MlflowClient().list_artifacts(run_id)}
    assert {"results.json", "tables.txt", "central_dogma.png"} <= names
