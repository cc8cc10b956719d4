"""Few-shot Central Dogma (BSM Appendix C): does the DNA encode this protein?

Task (`build_task`), made from GenBank records the way LucaOne's dataset was made:
- a positive per CDS: the gene DNA (the CDS span with its introns, plus `flank_bp` = 100 nt on
  each side, in the CDS's orientation) and the protein (the annotated /translation, checked
  against Biopython's translation of the CDS);
- one negative per positive, seeded, of one of these kinds, so that the DNA can no longer be
  translated into the protein:
    dna_substitution      one codon of the CDS replaced by a codon for another amino acid
    dna_insertion         1 or 2 nt inserted inside the CDS (frameshift)
    dna_deletion          1 or 2 nt deleted inside the CDS (frameshift)
    protein_substitution  ~`protein_change_fraction` of the residues (>= 1) changed
  DNA corruptions need a single-part CDS (its coding frame is then contiguous in the DNA); a
  spliced CDS gets a protein substitution.
- splits train : val : test = 4 : 3 : 25 (the paper's ratio) by a hash of the CDS, so a
  positive and its negative always share a split.
CDSs that give no pair are counted by reason (`skipped`), never dropped silently.

Scoring (`score_examples`), for causal models (BSM): k demonstration pairs (true pairs of the
train split, seeded per example) and then the test pair, each a document
`<dna>...<sep><protein>...` separated by `<eos>` as in pretraining; the score is the summed
log-probability of the test protein's letters (optionally divided by their number). An
example that does not fit the model's context with k demonstrations is skipped and counted.

Evaluation (`evaluate`): per k, the threshold on the score that maximises validation accuracy,
test accuracy at it, ROC AUC, and the pairwise win rate (how often a true pair scores above its
own corrupted copy; 0.5 is chance), also per corruption kind.

Imports torch lazily.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bsm_ray.eval.metrics import accuracy, best_threshold, roc_auc
from bsm_ray.ingest.builders import gene_dna, item_rng, stable_hash, translation_check
from bsm_ray.ingest.records import iter_genbank
from bsm_ray.tokenizers.char import EOS_ID, BsmCharTokenizer, format_document

AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
NEGATIVE_KINDS = ("dna_substitution", "dna_insertion", "dna_deletion", "protein_substitution")
SPLITS = ("train", "val", "test")


@dataclass
class CentralDogmaConfig:
    """How the Central Dogma task is made from GenBank records."""

    genbank: list[str] = field(default_factory=list)
    flank_bp: int = 100
    seed: int = 0
    split_ratio: list[int] = field(default_factory=lambda: [4, 3, 25])
    """train : val : test."""
    negative_kinds: list[str] = field(default_factory=lambda: list(NEGATIVE_KINDS))
    protein_change_fraction: float = 0.05

    def __post_init__(self) -> None:
        unknown = sorted(set(self.negative_kinds) - set(NEGATIVE_KINDS))
        if unknown or not self.negative_kinds:
            raise ValueError(f"negative_kinds {self.negative_kinds}: choose from {NEGATIVE_KINDS}")
        if len(self.split_ratio) != 3 or min(self.split_ratio) < 0 or sum(self.split_ratio) <= 0:
            raise ValueError(f"split_ratio must be 3 non-negative numbers, got {self.split_ratio}")


def sample_genbank(record: str) -> list[str]:
    """The sample corpus's GenBank file of `record` (e.g. NC_000932, the chloroplast),
    fetched and cached like the sample."""
    from bsm_ray.errors import ConfigError
    from bsm_ray.ingest.samples import sample_inputs

    found = [p for p in sample_inputs()["genbank"] if Path(p).name.startswith(record)]
    if not found:
        raise ConfigError(f"no GenBank record {record!r} in the sample corpus")
    return found


def _split(seed: int, key: str, ratio: list[int]) -> str:
    u = stable_hash("central_dogma_split", seed, key) / 2.0**64
    edges = np.cumsum(ratio) / sum(ratio)
    return SPLITS[int(np.searchsorted(edges, u, side="right"))]


def _cds_offset(feature, record_len: int, flank_bp: int) -> int:
    """Where the CDS starts in the gene DNA `gene_dna` returns (single-part CDS)."""
    loc = feature.location
    start = max(0, int(loc.start) - flank_bp)
    end = min(record_len, int(loc.end) + flank_bp)
    return int(loc.start) - start if loc.strand != -1 else end - int(loc.end)


def _mutate_dna(rng, dna: str, cds_start: int, cds_len: int, kind: str, table: int) -> str:
    from Bio.Data.CodonTable import unambiguous_dna_by_id

    codons = unambiguous_dna_by_id[table].forward_table  # codon -> amino acid (no stops)
    n_codons = cds_len // 3
    if kind == "dna_substitution":
        i = int(rng.integers(1, max(2, n_codons - 1)))  # not the start codon, not the stop
        at = cds_start + 3 * i
        old = codons.get(dna[at : at + 3])
        choices = sorted(c for c, aa in codons.items() if aa != old)
        return dna[:at] + choices[int(rng.integers(len(choices)))] + dna[at + 3 :]
    n = int(rng.integers(1, 3))  # 1 or 2 nt: a frameshift
    at = cds_start + int(rng.integers(3, max(4, cds_len - 3)))
    if kind == "dna_insertion":
        return dna[:at] + "".join(rng.choice(list("ACGT"), size=n)) + dna[at:]
    return dna[:at] + dna[at + n :]


def _mutate_protein(rng, protein: str, fraction: float) -> str:
    letters = list(protein)
    n = max(1, round(fraction * len(letters)))
    for i in rng.choice(len(letters), size=min(n, len(letters)), replace=False):
        others = [a for a in AMINO_ACIDS if a != letters[i]]
        letters[i] = others[int(rng.integers(len(others)))]
    return "".join(letters)


def build_task(cfg: CentralDogmaConfig) -> tuple[list[dict], Counter]:
    """Rows (pair_id, split, label, corruption, dna, protein, record, cds) and skips by reason."""
    rows: list[dict] = []
    skipped: Counter = Counter()
    for path in cfg.genbank:
        for record in iter_genbank(os.path.expanduser(path)):
            seq = record.seq.upper()
            for index, feature in enumerate(f for f in record.features if f.type == "CDS"):
                q = feature.qualifiers
                label = q.get("locus_tag", q.get("protein_id", [f"cds{index}"]))[0]
                if "pseudo" in q or "pseudogene" in q:
                    skipped["pseudo_cds"] += 1
                    continue
                table = int(q.get("transl_table", ["1"])[0])
                ours, problem = translation_check(feature, seq, table)
                protein = q.get("translation", [ours])[0].replace(" ", "").upper()
                if problem or protein != ours:
                    skipped["translation_not_checked"] += 1
                    continue
                dna, reason = gene_dna(feature, seq, cfg.flank_bp)
                if dna is None:
                    skipped[reason] += 1
                    continue
                pair_id = f"{record.id}|{label}|{index}"
                split = _split(cfg.seed, pair_id, cfg.split_ratio)
                base = {"pair_id": pair_id, "split": split, "record": record.id, "cds": label}
                rows.append({**base, "label": 1, "corruption": "", "dna": dna,
                             "protein": protein})  # fmt: skip
                rng = item_rng(cfg.seed, "central_dogma_negative", pair_id)
                single = len(feature.location.parts) == 1
                kinds = [k for k in cfg.negative_kinds
                         if single or k == "protein_substitution"]  # fmt: skip
                if not kinds:
                    skipped["spliced_cds_no_negative_kind"] += 1
                    rows.pop()
                    continue
                kind = kinds[int(rng.integers(len(kinds)))]
                neg_dna, neg_protein = dna, protein
                if kind == "protein_substitution":
                    neg_protein = _mutate_protein(rng, protein, cfg.protein_change_fraction)
                else:
                    cds_len = len(feature.location)
                    start = _cds_offset(feature, len(seq), cfg.flank_bp)
                    neg_dna = _mutate_dna(rng, dna, start, cds_len, kind, table)
                rows.append({**base, "label": 0, "corruption": kind, "dna": neg_dna,
                             "protein": neg_protein})  # fmt: skip
    return rows, skipped


def write_task(rows: list[dict], path: str | Path) -> Path:
    """The task as one Parquet table (written atomically)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bsm_ray.fileio import atomic_path

    with atomic_path(path) as tmp:
        pq.write_table(pa.Table.from_pylist(rows), tmp)
    return Path(path)


def read_task(path: str | Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


# --- scoring ---------------------------------------------------------------------------------


def _pair_ids(tok: BsmCharTokenizer, dna: str, protein: str) -> tuple[np.ndarray, int]:
    """Ids of `<dna>DNA<sep><protein>PROTEIN` and the number of protein letters at its end."""
    return tok.encode(format_document([("dna", dna), ("protein", protein)])), len(protein)


def build_example(tok, test: dict, demos: list[dict]) -> tuple[np.ndarray, int]:
    """Context ids (demonstrations, `<eos>`-separated, then the test pair) and how many of the
    last ids are the scored protein letters."""
    parts = []
    for d in demos:
        parts += [_pair_ids(tok, d["dna"], d["protein"])[0], np.array([EOS_ID], np.int32)]
    ids, n_scored = _pair_ids(tok, test["dna"], test["protein"])
    return np.concatenate([*parts, ids]), n_scored


def choose_demos(test: dict, pool: list[dict], k: int, budget: int, seed: int) -> list[dict] | None:
    """k true pairs from `pool` (not the test's own CDS), seeded per test example, that fit in
    `budget` tokens next to it; None if k of them do not fit."""
    if k == 0:
        return []
    rng = item_rng(seed, "central_dogma_demos", test["pair_id"], test["label"], k)
    room = budget - (len(test["dna"]) + len(test["protein"]) + 3)
    fitting = [d for d in pool if d["pair_id"] != test["pair_id"]
               and len(d["dna"]) + len(d["protein"]) + 4 <= room // k]  # fmt: skip
    if len(fitting) < k:
        return None
    return [fitting[i] for i in rng.choice(len(fitting), size=k, replace=False)]


def score_examples(model, examples: list[tuple[np.ndarray, int]], normalize: bool = False,
                   batch_size: int = 8, device=None) -> np.ndarray:  # fmt: skip
    """Summed (or mean) log-probability of each example's last `n_scored` ids given the rest."""
    import torch

    device = device or next(model.parameters()).device
    scores = np.zeros(len(examples))
    order = np.argsort([len(ids) for ids, _ in examples])  # similar lengths share a batch
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = max(len(examples[i][0]) for i in idx)
        ids = np.zeros((len(idx), width), dtype=np.int64)
        mask = np.zeros((len(idx), width), dtype=np.int64)
        for row, i in enumerate(idx):
            n = len(examples[i][0])
            ids[row, :n], mask[row, :n] = examples[i][0], 1
        with torch.no_grad():
            logits = model(input_ids=torch.from_numpy(ids).to(device),
                           attention_mask=torch.from_numpy(mask).to(device)).logits  # fmt: skip
            logp = torch.log_softmax(logits.float(), dim=-1).cpu().numpy()
        for row, i in enumerate(idx):
            seq, n_scored = examples[i]
            n = len(seq)
            targets = seq[n - n_scored :]
            # the logits at position t predict token t + 1
            lp = logp[row, np.arange(n - n_scored - 1, n - 1), targets]
            scores[i] = lp.sum() / (n_scored if normalize else 1)
    return scores


@dataclass
class FewShotConfig:
    shots: list[int] = field(default_factory=lambda: [0, 1, 2, 4])
    normalize: bool = False
    max_context: int | None = None
    """Longest context; None: the model's max_position_embeddings."""
    seed: int = 0
    batch_size: int = 8


def evaluate(model, rows: list[dict], cfg: FewShotConfig) -> list[dict]:
    """One result row per k: examples scored and skipped, threshold (chosen on val), test
    accuracy, test ROC AUC, pairwise win rate overall and per corruption kind."""
    tok = BsmCharTokenizer()
    budget = cfg.max_context or int(model.config.max_position_embeddings)
    pool = [r for r in rows if r["split"] == "train" and r["label"] == 1]
    results = []
    for k in cfg.shots:
        scored: dict[str, list[tuple[dict, float]]] = {"val": [], "test": []}
        skipped = 0
        for split in ("val", "test"):
            todo, examples = [], []
            for r in (r for r in rows if r["split"] == split):
                demos = choose_demos(r, pool, k, budget, cfg.seed)
                example = None if demos is None else build_example(tok, r, demos)
                if example is None or len(example[0]) > budget:
                    skipped += 1
                    continue
                todo.append(r)
                examples.append(example)
            s = score_examples(model, examples, cfg.normalize, cfg.batch_size)
            scored[split] = list(zip(todo, s.tolist(), strict=True))
        results.append(_summarize(k, scored, skipped))
    return results


def _summarize(k: int, scored: dict, skipped: int) -> dict:
    val_y = np.array([r["label"] for r, _ in scored["val"]])
    val_s = np.array([s for _, s in scored["val"]])
    test_y = np.array([r["label"] for r, _ in scored["test"]])
    test_s = np.array([s for _, s in scored["test"]])
    out = {"k": k, "val_examples": len(val_y), "test_examples": len(test_y), "skipped": skipped}
    if len(val_y) and len(set(val_y.tolist())) == 2:
        out["threshold"] = best_threshold(val_s, val_y)
        out["test_accuracy"] = accuracy(test_y, (test_s >= out["threshold"]).astype(int))
    if len(set(test_y.tolist())) == 2:
        out["test_auc"] = roc_auc(test_y, test_s)
    # pairwise: a true pair against its own corrupted copy (both scored), val + test
    by_pair: dict[str, dict[int, tuple[dict, float]]] = {}
    for split in ("val", "test"):
        for r, s in scored[split]:
            by_pair.setdefault(r["pair_id"], {})[r["label"]] = (r, s)
    wins: dict[str, list[float]] = {}
    for pair in by_pair.values():
        if 0 in pair and 1 in pair:
            kind = pair[0][0]["corruption"]
            t, f = pair[1][1], pair[0][1]
            wins.setdefault(kind, []).append(1.0 if t > f else 0.5 if t == f else 0.0)
    every = [w for ws in wins.values() for w in ws]
    out["pairs"] = len(every)
    out["win_rate"] = float(np.mean(every)) if every else float("nan")
    out["win_p"] = sign_test_p(every)
    for kind, ws in sorted(wins.items()):
        out[f"win_rate/{kind}"] = float(np.mean(ws))
    return out


def sign_test_p(wins: list[float]) -> float:
    """One-sided sign test: the chance of at least this many wins if true and corrupted pairs
    were ordered at random (ties left out)."""
    from scipy.stats import binomtest

    decided = [w for w in wins if w != 0.5]
    if not decided:
        return float("nan")
    return float(binomtest(int(sum(decided)), len(decided), 0.5, alternative="greater").pvalue)


def format_results(results: list[dict]) -> str:
    """The per-k table printed by jobs/evaluate.py."""
    kinds = sorted({key.split("/", 1)[1] for r in results for key in r
                    if key.startswith("win_rate/")})  # fmt: skip
    header = ["k", "val", "test", "skipped", "threshold", "test acc", "test AUC", "pairs",
              "win rate", "sign p", *kinds]  # fmt: skip
    lines = ["  ".join(f"{h:>10s}" for h in header)]
    for r in results:
        cells = [str(r["k"]), str(r["val_examples"]), str(r["test_examples"]), str(r["skipped"]),
                 _num(r.get("threshold")), _num(r.get("test_accuracy")), _num(r.get("test_auc")),
                 str(r["pairs"]), _num(r["win_rate"]), _num(r.get("win_p")),
                 *(_num(r.get(f"win_rate/{kd}")) for kd in kinds)]  # fmt: skip
        lines.append("  ".join(f"{c:>10s}" for c in cells))
    return "\n".join(lines)


def plot_results(results: list[dict], path: str | Path) -> Path:
    """Test accuracy, AUC and pairwise win rate by k (PNG, written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bsm_ray.fileio import atomic_path

    ks = [r["k"] for r in results]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for key, label in (("test_accuracy", "test accuracy"), ("test_auc", "test AUC"),
                       ("win_rate", "win rate (true > corrupted)")):  # fmt: skip
        ax.plot(ks, [r.get(key, float("nan")) for r in results], marker="o", label=label)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set(xlabel="demonstrations k", ylabel="score", ylim=(0, 1), xticks=ks,
           title="few-shot Central Dogma")  # fmt: skip
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return Path(path)


def _num(x) -> str:
    return "-" if x is None else f"{x:.3f}"
