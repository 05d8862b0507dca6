"""Does a null-space adapter disturb pre-trained behaviour less than plain LoRA at the same task loss?

Each adapter method fine-tunes the same base model on the task over its own grid of learning rates, for every
seed: ``lora`` (peft's default init), ``null_frozen_A`` and ``null_projection`` (LoRA-Null), ``corda_kpm`` (peft's
CorDA, knowledge-preserved mode, calibrated on the same texts as LoRA-Null), plus the control ``head_only`` (the
same peft model with every LoRA matrix frozen, at ``learning_rate``: what the classifier head alone reaches). The
head trains at ``head_learning_rate`` in every run when the config sets it, so the sweep moves the adapter only.

Preservation is measured on texts that neither calibration nor the task saw (texts that occur in either are
dropped and counted):

- ``calib_like_*``: held-out texts of the calibration texts' distribution (``preservation_dataset``, another split);
- ``unseen_*``: a third, labelled distribution (``probe_dataset``): a logistic probe fitted on the *base* model's
  embeddings of its train slice, frozen, applied to the tuned model's embeddings of its validation slice
  (``probe_log_loss``, ``probe_accuracy``; the base model's own figures beside them).

On both: the mean cosine between the base and tuned mean-pooled sentence embeddings, and the similarity structure
that is a sentence-embedding model's pre-trained job: the Spearman correlation of the two pairwise cosine matrices
(``*_spearman``) and the mean overlap of each text's ``knn_k`` nearest neighbours (``*_knn``, chance
``k / (n - 1)``). The task outcome is the validation loss (and accuracy); methods are compared at matched task loss
(:mod:`hf_ext.frontier`), the seeds paired, against plain LoRA.

Files in ``output_dir``: ``preservation.csv`` (one row per method, learning rate and seed), ``preservation.json``
(rows, means per method and learning rate, the base model, sample sizes, chance levels and the matched-loss
comparisons) and ``preservation.png`` (each outcome against the task loss, one curve per method).
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import math
import re
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from transformers import TrainingArguments, set_seed

from .. import distributed
from ..config import AT_LEAST_ONE, POSITIVE, Bounds, DataArguments, ModelArguments, check_bounds, given_keys
from ..errors import ConfigError, DataError
from ..frontier import compare_at_matched_loss, format_comparison, past_lowest_loss
from ..io import write_json
from ..models import eval_mode, load_model, model_device
from ..plotting import plotting_available, require_pyplot
from ..texts import load_texts, text_batches
from ..trainer import HfExtTrainer
from .config import LoraNullArguments
from .init import initialize_lora_null_weights
from .plan import CALIBRATION_BATCH
from .study import prepare_run

# who refuses a sharded launcher, and what it reads whole: calibration and initialisation read whole weights
LAUNCHER_CHECK = ("the LoRA-Null preservation study (its calibration and initialisation)", "weights")
SWEPT = ("lora", "null_frozen_A", "null_projection", "corda_kpm")
METHODS = (*SWEPT, "head_only")
# Outcomes compared at matched task loss, and whether a larger value means more preserved.
COMPARED = {
    "probe_log_loss": False,
    "unseen_spearman": True,
    "unseen_knn": True,
    "calib_like_spearman": True,
}
SETS = ("calib_like", "unseen")


@dataclass
class PreservationArguments:
    """Which adapters to compare over which learning rates and seeds, and the texts that measure preservation."""

    BOUNDS: ClassVar[dict[str, Bounds]] = {
        "preservation_samples": Bounds(3),
        "probe_train_samples": AT_LEAST_ONE,
        "probe_samples": Bounds(3),
        "knn_k": AT_LEAST_ONE,
        "matched_levels": AT_LEAST_ONE,
        "probe_l2": POSITIVE,
    }

    methods: list[str] = field(
        default_factory=lambda: list(METHODS),
        metadata={
            "help": "Arms: lora (the reference, required), null_frozen_A, null_projection, corda_kpm, head_only "
            "(control: only the classifier head trains, at learning_rate)."
        },
    )
    seeds: list[int] = field(
        default_factory=lambda: [1, 2, 3],
        metadata={"help": "Training seeds; every method and learning rate runs each."},
    )
    lora_learning_rates: list[float] = field(
        default_factory=lambda: [5e-4, 1e-3, 2e-3, 4e-3], metadata={"help": "Learning rates swept for lora."}
    )
    null_frozen_A_learning_rates: list[float] = field(
        default_factory=lambda: [1e-3, 4e-3, 1.6e-2], metadata={"help": "Learning rates swept for null_frozen_A."}
    )
    null_projection_learning_rates: list[float] = field(
        default_factory=lambda: [5e-4, 1e-3, 2e-3, 4e-3],
        metadata={"help": "Learning rates swept for null_projection."},
    )
    corda_kpm_learning_rates: list[float] = field(
        default_factory=lambda: [2.5e-5, 1e-4, 4e-4], metadata={"help": "Learning rates swept for corda_kpm."}
    )
    preservation_dataset: str = field(
        default="corpus:chitchat",
        metadata={
            "help": "Unlabelled texts of the calibration distribution, another split than calibration: "
            "'corpus:<name>', 'builtin:<task>' or a .jsonl/.json/.csv file."
        },
    )
    preservation_split: str = field(default="test", metadata={"help": "Split of preservation_dataset."})
    preservation_samples: int = field(default=300, metadata={"help": "Texts of preservation_dataset measured."})
    probe_dataset: str = field(
        default="corpus:health_tweets",
        metadata={
            "help": "A labelled third distribution (neither task nor calibration), 'corpus:<name>' or "
            "'builtin:<task>' with a label column: the frozen base probe's data."
        },
    )
    probe_train_samples: int = field(
        default=2000, metadata={"help": "Train-split examples the probe is fitted on (base model embeddings)."}
    )
    probe_samples: int = field(
        default=300, metadata={"help": "Validation-split examples the frozen probe and the structure measures use."}
    )
    probe_l2: float = field(default=3e-2, metadata={"help": "L2 penalty of the probe (standardised features)."})
    knn_k: int = field(default=10, metadata={"help": "Neighbours per text in the nearest-neighbour overlap."})
    matched_levels: int = field(default=3, metadata={"help": "Task-loss levels each comparison is read at."})

    def __post_init__(self):
        check_bounds(self)
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods or len(set(self.methods)) != len(self.methods):
            raise ConfigError(f"methods {self.methods} must be a non-empty list of distinct {', '.join(METHODS)}")
        if "lora" not in self.methods:
            raise ConfigError(f"methods {self.methods} must include lora: every other method is compared with it")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds {self.seeds} must be a non-empty list without repeats")
        for method in (m for m in self.methods if m in SWEPT):
            key, rates = f"{method}_learning_rates", self.learning_rates(method)
            if not rates:
                raise ConfigError(f"{key} is empty: give the learning rates to sweep for {method}, e.g. [1e-3, 2e-3]")
            if not all(math.isfinite(r) and r > 0 for r in rates) or len(set(rates)) != len(rates):
                raise ConfigError(f"{key}={rates} must hold distinct positive numbers")

    def learning_rates(self, method: str) -> list[float]:
        """The grid swept for ``method`` (a swept adapter)."""
        return list(getattr(self, f"{method}_learning_rates"))


@torch.no_grad()
def sentence_embeddings(model: torch.nn.Module, batches) -> torch.Tensor:
    """Mean over non-pad tokens of the last hidden state, float64, one row per example."""
    rows = []
    device = model_device(model)
    with eval_mode(model):
        for batch in batches:
            inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
            hidden = model(**inputs, output_hidden_states=True).hidden_states[-1].double()
            mask = inputs["attention_mask"].unsqueeze(-1).double()
            rows.append(((hidden * mask).sum(1) / mask.sum(1)).cpu())
    return torch.cat(rows)


@dataclass
class FrozenProbe:
    """An L2-regularised multinomial logistic regression on standardised features, fitted once (full-batch L-BFGS,
    deterministic) and then applied unchanged, standardisation included, to other features."""

    mean: torch.Tensor
    std: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor

    @classmethod
    def fit(cls, x: torch.Tensor, y: torch.Tensor, *, classes: int, l2: float = 3e-2) -> FrozenProbe:
        x = x.double()
        mean, std = x.mean(0), x.std(0).clamp(min=1e-8)
        xs = (x - mean) / std
        weight = torch.zeros(xs.shape[1], classes, dtype=torch.float64, requires_grad=True)
        bias = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.LBFGS([weight, bias], max_iter=300, line_search_fn="strong_wolfe")

        def closure():
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(xs @ weight + bias, y) + l2 * (weight * weight).sum()
            loss.backward()
            return loss

        optimizer.step(closure)
        return cls(mean, std, weight.detach(), bias.detach())

    @torch.no_grad()
    def score(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        """``(log-loss, accuracy)`` of the probe on features ``x`` with labels ``y``."""
        logits = ((x.double() - self.mean) / self.std) @ self.weight + self.bias
        loss = torch.nn.functional.cross_entropy(logits, y)
        return float(loss), float((logits.argmax(1) == y).double().mean())


def similarity_structure(base: torch.Tensor, tuned: torch.Tensor, k: int) -> tuple[float, float]:
    """``(Spearman, k-NN overlap)`` between two embeddings of the same texts: the Spearman correlation of the
    upper triangles of their pairwise cosine matrices, and the mean share of each text's ``k`` nearest neighbours
    (cosine, itself excluded) that both embeddings agree on (chance ``k / (n - 1)``)."""
    from scipy.stats import spearmanr

    n = base.shape[0]
    if not 0 < k < n:
        raise ConfigError(f"knn_k={k} needs 0 < k < the number of texts ({n}): lower knn_k or measure more texts")
    cosines = []
    for x in (base, tuned):
        unit = torch.nn.functional.normalize(x.double(), dim=1)
        cosines.append(unit @ unit.T)
    upper = torch.triu_indices(n, n, offset=1)
    rho = float(spearmanr(cosines[0][upper[0], upper[1]].numpy(), cosines[1][upper[0], upper[1]].numpy())[0])
    neighbours = []
    for c in cosines:
        c = c.clone()
        c.fill_diagonal_(-math.inf)
        neighbours.append(c.topk(k, dim=1).indices)
    overlap = [len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(*neighbours, strict=True)]
    return rho, statistics.mean(overlap)


def _key(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.lower()))


def _disjoint(texts: list[str], seen: set[str]) -> tuple[list[int], int]:
    """Indices of ``texts`` absent from ``seen`` (normalised), and how many were dropped."""
    keep = [i for i, t in enumerate(texts) if _key(t) not in seen]
    return keep, len(texts) - len(keep)


def _calibration_texts(args: LoraNullArguments, data_args: DataArguments, data) -> list[str]:
    if args.calib_dataset is None:
        column = data_args.text_column if data_args.text_column in data.raw["train"].column_names else None
        if column is None:
            raise ConfigError("calib_dataset is not set and the training data has no text column: set calib_dataset")
        return [str(t) for t in list(data.raw["train"][column])[: args.calib_samples]]
    try:
        return load_texts(
            args.calib_dataset,
            split=args.calib_split,
            column=args.calib_text_column,
            limit=args.calib_samples,
            option="calib_text_column",
        )[1]
    except (ConfigError, DataError) as err:
        raise type(err)(f"calib_dataset={args.calib_dataset!r}: {err}") from None


def _labelled_splits(name: str):
    """``{"train", "validation"}`` datasets of a labelled built-in task or corpus."""
    from ..corpora import PREFIX as CORPUS_PREFIX
    from ..data import BUILTIN_PREFIX
    from ..tasks import load_builtin_task

    try:
        if name.startswith(BUILTIN_PREFIX):
            splits = load_builtin_task(name[len(BUILTIN_PREFIX) :])
        elif name.startswith(CORPUS_PREFIX):
            from ..corpora import load_corpus

            splits = load_corpus(name, splits=["train", "validation"])
        else:
            raise ConfigError(
                "expected 'corpus:<name>' or 'builtin:<task>' (a labelled data set with train and validation splits)"
            )
    except (ConfigError, DataError, ValueError) as err:
        raise ConfigError(f"probe_dataset={name!r}: {err}") from None
    columns = splits["train"].column_names
    if "label" not in columns or "text" not in columns:
        raise ConfigError(
            f"probe_dataset={name!r} has no labels (columns: {columns}): the frozen probe needs a labelled data set, "
            "e.g. corpus:health_tweets"
        )
    return splits


@dataclass
class _Measured:
    """The preservation texts as batches, their base embeddings and the frozen probe: fixed for every run."""

    batches: dict[str, list]
    base: dict[str, torch.Tensor]
    probe: FrozenProbe
    labels: torch.Tensor
    base_probe: tuple[float, float]
    sizes: dict[str, Any]
    chance: dict[str, float]
    base_structure: dict[str, tuple[float, float]]


def _measurement_sets(study: PreservationArguments, args, data_args, tokenizer, data, calib_texts, base) -> _Measured:
    max_length = data_args.max_seq_length
    seen = {_key(t) for t in calib_texts}
    task_column = data_args.text_column
    for split in ("train", "validation"):
        if split in data.raw and task_column in data.raw[split].column_names:
            seen |= {_key(str(t)) for t in data.raw[split][task_column]}
    try:
        _, texts = load_texts(
            study.preservation_dataset,
            split=study.preservation_split,
            limit=study.preservation_samples + len(calib_texts),  # room for dropped overlaps
            option="preservation_dataset's text column",
        )
    except (ConfigError, DataError) as err:
        raise type(err)(f"preservation_dataset={study.preservation_dataset!r}: {err}") from None
    keep, dropped_calib_like = _disjoint(texts, seen)
    calib_like = [texts[i] for i in keep[: study.preservation_samples]]
    if len(calib_like) <= study.knn_k:
        raise ConfigError(
            f"preservation_dataset={study.preservation_dataset!r} split {study.preservation_split!r} leaves "
            f"{len(calib_like)} texts outside the calibration and task data, need more than knn_k={study.knn_k}: "
            "raise preservation_samples, lower knn_k, or measure another split than calib_split"
        )

    splits = _labelled_splits(study.probe_dataset)
    train = splits["train"].select(range(min(study.probe_train_samples, len(splits["train"]))))
    names = sorted({str(v) for v in train["label"]})
    if len(names) < 2:
        raise ConfigError(f"probe_dataset={study.probe_dataset!r}: the probe's train slice holds one class")
    index = {n: i for i, n in enumerate(names)}
    probe_seen = seen | {_key(str(t)) for t in train["text"]}
    limit = study.probe_samples + len(calib_texts)  # room for dropped overlaps
    texts = [str(t) for t in splits["validation"]["text"][:limit]]
    found = [str(v) for v in splits["validation"]["label"][:limit]]
    keep, dropped_unseen = _disjoint(texts, probe_seen)
    keep = [i for i in keep if found[i] in index][: study.probe_samples]
    if len(keep) <= study.knn_k:
        raise ConfigError(f"probe_dataset={study.probe_dataset!r}: too few validation texts outside the other data")
    unseen = [texts[i] for i in keep]
    labels = torch.tensor([index[found[i]] for i in keep])
    train_labels = torch.tensor([index[str(v)] for v in train["label"]])

    batches = {
        "calib_like": text_batches(tokenizer, calib_like, batch_size=64, max_length=max_length),
        "unseen": text_batches(tokenizer, unseen, batch_size=64, max_length=max_length),
    }
    base_emb = {name: sentence_embeddings(base, b) for name, b in batches.items()}
    train_emb = sentence_embeddings(
        base, text_batches(tokenizer, [str(t) for t in train["text"]], batch_size=64, max_length=max_length)
    )
    probe = FrozenProbe.fit(train_emb, train_labels, classes=len(names), l2=study.probe_l2)
    counts = Counter(labels.tolist())
    priors = torch.tensor([counts.get(i, 0) / len(labels) for i in range(len(names))], dtype=torch.float64)
    task_labels = list(data.validation["labels"])
    task_majority = Counter(task_labels).most_common(1)[0][1] / len(task_labels)
    return _Measured(
        batches=batches,
        base=base_emb,
        probe=probe,
        labels=labels,
        base_probe=probe.score(base_emb["unseen"], labels),
        sizes={
            "train_examples": len(data.train),
            "task_validation": len(task_labels),
            "seeds": len(study.seeds),
            "calibration_texts": len(calib_texts),
            "calib_like_texts": len(calib_like),
            "calib_like_dropped_overlaps": dropped_calib_like,
            "unseen_texts": len(unseen),
            "unseen_dropped_overlaps": dropped_unseen,
            "probe_train_texts": len(train),
            "probe_classes": len(names),
        },
        chance={
            "task_majority_accuracy": task_majority,
            "task_prior_log_loss": _entropy(Counter(task_labels)),
            "probe_majority_accuracy": max(counts.values()) / len(labels),
            "probe_prior_log_loss": float(-(priors[priors > 0] * priors[priors > 0].log()).sum()),
            "probe_uniform_log_loss": math.log(len(names)),
            "calib_like_knn": study.knn_k / (len(calib_like) - 1),
            "unseen_knn": study.knn_k / (len(unseen) - 1),
            "spearman": 0.0,
        },
        base_structure={name: similarity_structure(e, e, study.knn_k) for name, e in base_emb.items()},
    )


def _entropy(counts: Counter) -> float:
    total = sum(counts.values())
    return -sum(c / total * math.log(c / total) for c in counts.values())


def _initialised(method, model_args, args: LoraNullArguments, tokenizer, data, calibration, base_seed):
    """The peft model of ``method`` before training. Every init but plain LoRA's is deterministic given the
    calibration texts, so those are built once per study and copied (see :func:`run_preservation_study`)."""
    from peft import get_peft_model

    model = load_model(model_args, tokenizer, data.labels, seed=base_seed)
    config = args.lora_config(model_args.task_type)
    if method == "corda_kpm":
        from peft.tuners.lora.config import CordaConfig
        from peft.tuners.lora.corda import preprocess_corda

        config = args.lora_config(
            model_args.task_type, init_lora_weights="corda", corda_config=CordaConfig(corda_method="kpm")
        )

        @torch.no_grad()
        def run_model():  # CorDA's covariance hooks assume batch size 1
            for batch in calibration:
                for i in range(batch["input_ids"].shape[0]):
                    keep = batch["attention_mask"][i].bool()
                    model(input_ids=batch["input_ids"][i : i + 1, keep])

        with eval_mode(model):
            preprocess_corda(model, config, run_model=run_model)
        return get_peft_model(model, config)
    model = get_peft_model(model, config)
    if method == "head_only":
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                parameter.requires_grad_(False)
    elif method != "lora":
        initialize_lora_null_weights(model, calibration, mode=method, memory_gb=args.calib_memory_gb, progress=False)
    return model


def _runs(study: PreservationArguments, training_args) -> list[tuple[str, float, int]]:
    runs = []
    for seed in study.seeds:
        for method in study.methods:
            rates = [training_args.learning_rate] if method == "head_only" else study.learning_rates(method)
            runs += [(method, lr, seed) for lr in rates]
    return runs


def run_preservation_study(
    model_args: ModelArguments,
    data_args: DataArguments,
    args: LoraNullArguments,
    study: PreservationArguments,
    training_args: TrainingArguments,
) -> Path:
    """Every method x learning rate x seed: train, task loss and accuracy, preservation on held-out texts; then
    the methods against plain LoRA at matched task loss."""
    ignored = sorted({"mode", "freeze_A"} & given_keys(training_args, type(args)))
    if ignored:
        raise ConfigError(
            f"{', '.join(ignored)} do not apply to the preservation recipe: it compares the adapters named in "
            'methods (e.g. methods=["lora", "null_frozen_A", "null_projection"])'
        )
    if training_args.resume_from_checkpoint:
        raise ConfigError(
            "the preservation recipe does not resume (it trains one model per method, learning rate and seed); run "
            "it without resume_from_checkpoint, with overwrite_output_dir=true to start afresh"
        )
    started = time.perf_counter()
    root, tokenizer, data, base = prepare_run(
        model_args, data_args, args, training_args, "preservation.json", launcher_check=LAUNCHER_CHECK
    )
    calib_texts = _calibration_texts(args, data_args, data)
    calibration = text_batches(
        tokenizer,
        calib_texts,
        batch_size=CALIBRATION_BATCH,
        max_length=args.calib_max_length or data_args.max_seq_length,
    )
    measured = _measurement_sets(study, args, data_args, tokenizer, data, calib_texts, base)
    print(_sizes_line(measured, study), flush=True)
    cache: dict[str, torch.nn.Module] = {}
    rows = []
    runs = _runs(study, training_args)
    for number, (method, lr, seed) in enumerate(runs, 1):
        tick = time.perf_counter()
        if method == "lora":
            set_seed(seed)  # plain LoRA's A is random: one init per seed
            model = _initialised(method, model_args, args, tokenizer, data, calibration, training_args.seed)
        else:
            if method not in cache:
                cache[method] = _initialised(
                    method, model_args, args, tokenizer, data, calibration, training_args.seed
                )
            model = copy.deepcopy(cache[method])
        run_args = dataclasses.replace(
            training_args, output_dir=str(root / f"seed-{seed}" / method / f"lr-{lr:g}"), seed=seed, learning_rate=lr
        )
        trainer = HfExtTrainer(model=model, args=run_args, processing_class=tokenizer, **data.trainer_kwargs())
        trainer.train()
        metrics = trainer.evaluate()
        row = {
            "method": method,
            "learning_rate": lr,
            "seed": seed,
            "task_eval_loss": float(metrics["eval_loss"]),
            "task_accuracy": float(metrics["eval_accuracy"]),
        }
        for name, batches in measured.batches.items():
            tuned = sentence_embeddings(model, batches)
            cosine = torch.nn.functional.cosine_similarity(tuned, measured.base[name], dim=1)
            rho, knn = similarity_structure(measured.base[name], tuned, study.knn_k)
            row |= {f"{name}_cosine": float(cosine.mean()), f"{name}_spearman": rho, f"{name}_knn": knn}
            if name == "unseen":
                row["probe_log_loss"], row["probe_accuracy"] = measured.probe.score(tuned, measured.labels)
        row["seconds"] = round(time.perf_counter() - tick, 1)
        rows.append(row)
        print(f"preservation run {number}/{len(runs)}: {_short(row)}", flush=True)
        del trainer, model
    if distributed.is_main_process():
        _write(root, rows, measured, study, time.perf_counter() - started)
    distributed.barrier()
    return root


def _short(row: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())


def _sizes_line(measured: _Measured, study: PreservationArguments) -> str:
    s = measured.sizes
    return (
        f"sample sizes: {s['train_examples']} training examples, task validation n={s['task_validation']}, "
        f"{s['seeds']} seeds; calibration {s['calibration_texts']} texts; preservation: {s['calib_like_texts']} "
        f"{study.preservation_dataset} ({study.preservation_split}) texts ({s['calib_like_dropped_overlaps']} "
        f"dropped as seen in calibration or task data), {s['unseen_texts']} {study.probe_dataset} validation texts "
        f"({s['unseen_dropped_overlaps']} dropped), probe fitted on {s['probe_train_texts']} base embeddings "
        f"({s['probe_classes']} classes)"
    )


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


SUMMARISED = (
    "task_eval_loss",
    "task_accuracy",
    "probe_log_loss",
    "probe_accuracy",
    "unseen_spearman",
    "unseen_knn",
    "unseen_cosine",
    "calib_like_spearman",
    "calib_like_knn",
    "calib_like_cosine",
)


def _cells(rows: list[dict[str, Any]]) -> dict[tuple[str, float], list[dict[str, Any]]]:
    cells: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for r in rows:
        cells.setdefault((r["method"], r["learning_rate"]), []).append(r)
    return cells


def overshoots(rows) -> list[dict[str, Any]]:
    """The runs past their frontier (:func:`hf_ext.frontier.past_lowest_loss`), per swept method and seed."""
    out = []
    for method in SWEPT:
        for seed in sorted({r["seed"] for r in rows if r["method"] == method}):
            mine = [r for r in rows if r["method"] == method and r["seed"] == seed]
            out += [mine[i] for i in past_lowest_loss([(r["learning_rate"], r["task_eval_loss"]) for r in mine])]
    return out


def _comparisons(rows, study: PreservationArguments) -> dict[str, dict[str, dict]]:
    dropped = {id(r) for r in overshoots(rows)}

    def curves(method, outcome):
        out: dict[int, list[tuple[float, float]]] = {}
        for r in rows:
            if r["method"] == method and id(r) not in dropped:
                out.setdefault(r["seed"], []).append((r["task_eval_loss"], r[outcome]))
        return out

    return {
        method: {
            outcome: compare_at_matched_loss(
                curves("lora", outcome), curves(method, outcome), levels=study.matched_levels
            )
            for outcome in COMPARED
        }
        for method in study.methods
        if method in SWEPT and method != "lora"
    }


def _verdict(comparison: dict, outcome: str) -> str:
    if "skipped" in comparison:
        return "not compared"
    words = []
    for level in comparison["levels"]:
        if not (math.isfinite(level["low"]) and math.isfinite(level["high"])):
            words.append("undetermined")
        elif level["low"] > 0 or level["high"] < 0:
            preserves = (level["low"] > 0) == COMPARED[outcome]
            words.append("preserves more" if preserves else "preserves less")
        else:
            words.append(f"no difference larger than {level['resolution']:.3g}")
    return "; ".join(f"loss {lv['loss']:.3f}: {w}" for lv, w in zip(comparison["levels"], words, strict=True))


def _pooled_sd(rows, metric: str) -> float:
    """Seed-to-seed standard deviation pooled over the (method, learning rate) cells with several seeds."""
    squares, df = 0.0, 0
    for cell in _cells(rows).values():
        values = [r[metric] for r in cell]
        if len(values) > 1:
            squares += statistics.variance(values) * (len(values) - 1)
            df += len(values) - 1
    return math.sqrt(squares / df) if df else math.nan


def _write(root: Path, rows, measured: _Measured, study: PreservationArguments, seconds: float) -> None:
    with open(root / "preservation.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    summary = [
        {"method": m, "learning_rate": lr, "runs": len(cell)}
        | {metric: _mean_sd([r[metric] for r in cell]) for metric in SUMMARISED}
        for (m, lr), cell in _cells(rows).items()
    ]
    summary.sort(key=lambda s: (METHODS.index(s["method"]), s["learning_rate"]))
    comparisons = _comparisons(rows, study)
    accuracies = [r["task_accuracy"] for r in rows if r["method"] in SWEPT]
    p = statistics.mean(accuracies)
    n = measured.sizes["task_validation"]
    task_se = math.sqrt(p * (1 - p) / n)
    base_loss, base_acc = measured.base_probe
    n_probe = measured.sizes["unseen_texts"]
    power = {
        "task_accuracy_binomial_se": task_se,
        "task_accuracy_detectable_difference": 1.96 * math.sqrt(2) * task_se,
        "probe_accuracy_binomial_se": math.sqrt(base_acc * (1 - base_acc) / n_probe),
        "seed_sd": {metric: _pooled_sd(rows, metric) for metric in ("task_eval_loss", "task_accuracy", *COMPARED)},
        "smallest_sign_flip_p": min(1.0, 2 / 2 ** len(study.seeds)),
    }
    ceiling = [r for r in rows if r["task_accuracy"] >= 0.99]
    past = overshoots(rows)
    write_json(
        root / "preservation.json",
        {
            "preservation_dataset": study.preservation_dataset,
            "preservation_split": study.preservation_split,
            "probe_dataset": study.probe_dataset,
            "sample_sizes": measured.sizes,
            "chance": measured.chance,
            "base_model": {
                "probe_log_loss": base_loss,
                "probe_accuracy": base_acc,
                "similarity_with_itself": {k: list(v) for k, v in measured.base_structure.items()},
            },
            "power": power,
            "methods": summary,
            "comparisons": comparisons,
            "verdicts": {
                m: {o: _verdict(c, o) for o, c in by_outcome.items()} for m, by_outcome in comparisons.items()
            },
            "runs_at_ceiling": len(ceiling),
            "off_frontier": [{k: r[k] for k in ("method", "learning_rate", "seed", "task_eval_loss")} for r in past],
            "seconds": seconds,
            "rows": rows,
        },
    )
    chance = measured.chance
    lines = [
        "",
        _sizes_line(measured, study),
        f"chance: task accuracy {chance['task_majority_accuracy']:.3f} (majority class), task loss "
        f"{chance['task_prior_log_loss']:.4f} (class priors); probe accuracy {chance['probe_majority_accuracy']:.3f}, "
        f"probe log-loss {chance['probe_prior_log_loss']:.4f} (priors) / {chance['probe_uniform_log_loss']:.4f} "
        f"(uniform); k-NN overlap {chance['unseen_knn']:.4f} (k={study.knn_k}); Spearman 0",
        f"base model: frozen probe on {study.probe_dataset} validation: log-loss {base_loss:.4f}, accuracy "
        f"{base_acc:.3f} (binomial s.e. {power['probe_accuracy_binomial_se']:.3f}); the base itself scores "
        "Spearman 1, k-NN 1, cosine 1",
        f"power: binomial s.e. of a task accuracy {task_se:.4f} at n={n} (two accuracies differ detectably by about "
        f"{power['task_accuracy_detectable_difference']:.3f}); seed-to-seed s.d. (pooled within method and lr): "
        + ", ".join(f"{k} {v:.4g}" for k, v in power["seed_sd"].items())
        + f"; with {len(study.seeds)} seeds the exact sign-flip p is at least {power['smallest_sign_flip_p']:.3g}, "
        "so the t interval carries the verdict",
        "",
        "| method | lr | runs | task eval loss | task accuracy | probe log-loss | probe accuracy | unseen Spearman | "
        "unseen k-NN | unseen cosine | calib-like Spearman | calib-like k-NN | calib-like cosine |",
        "| --- | --- | --- | " + " | ".join("---" for _ in SUMMARISED) + " |",
        f"| base model | - | - | - | - | {base_loss:.4f} | {base_acc:.3f} | 1 | 1 | 1 | 1 | 1 | 1 |",
    ]
    for s in summary:
        cells = [f"{s[m][0]:.4f} ± {s[m][1]:.4f}" for m in SUMMARISED]
        lines.append(f"| {s['method']} | {s['learning_rate']:g} | {s['runs']} | " + " | ".join(cells) + " |")
    lines.append("")
    if past:
        lines.append(
            f"{len(past)} run(s) past the learning rate with their seed's lowest task loss, left out of the "
            "matched-loss comparison (overshoot): "
            + ", ".join(f"{r['method']} lr {r['learning_rate']:g} seed {r['seed']}" for r in past)
        )
    for method, by_outcome in comparisons.items():
        for outcome, comparison in by_outcome.items():
            direction = "higher" if COMPARED[outcome] else "lower"
            label = f"{outcome} ({direction} = more preserved)"
            if "skipped" in comparison:
                lines.append(f"{label}, {method} vs lora at matched loss: not compared ({comparison['skipped']})")
                continue
            lines += format_comparison(comparison, "lora", method, label)
            lines.append(f"  verdict: {_verdict(comparison, outcome)}")
    if ceiling:
        lines.append(f"WARNING: {len(ceiling)} run(s) reached task accuracy >= 0.99: the task is at its ceiling there")
    lines.append(f"study wall time: {seconds / 60:.1f} min for {len(rows)} runs")
    print("\n".join(lines), flush=True)
    if plotting_available("preservation figure"):
        _figure(root, rows, measured, study)


def _figure(root: Path, rows, measured: _Measured, study: PreservationArguments) -> None:
    plt = require_pyplot()

    figure, axes = plt.subplots(2, 2, figsize=(11, 8.5))
    titles = {
        "probe_log_loss": f"frozen base probe on tuned embeddings, {study.probe_dataset}",
        "unseen_spearman": f"Spearman of pairwise cosines, {study.probe_dataset}",
        "unseen_knn": f"{study.knn_k}-NN overlap, {study.probe_dataset}",
        "calib_like_spearman": f"Spearman of cosines, {study.preservation_dataset} ({study.preservation_split})",
    }
    for ax, outcome in zip(axes.flat, COMPARED, strict=True):
        for i, method in enumerate(study.methods):
            color = f"C{i}"
            mine = [r for r in rows if r["method"] == method]
            ax.scatter([r["task_eval_loss"] for r in mine], [r[outcome] for r in mine], color=color, alpha=0.35, s=14)
            means = sorted(
                (statistics.mean(r["task_eval_loss"] for r in cell), statistics.mean(r[outcome] for r in cell))
                for (m, _), cell in _cells(rows).items()
                if m == method
            )
            marker = "*" if method == "head_only" else "o"
            ax.plot([x for x, _ in means], [y for _, y in means], marker=marker, color=color, label=method)
        if outcome == "probe_log_loss":
            ax.axhline(measured.base_probe[0], color="k", ls="--", lw=1, label="base model")
        ax.set_xlabel("task validation loss")
        ax.set_ylabel(outcome)
        ax.set_title(titles[outcome], fontsize=9)
        ax.legend(fontsize=7)
    figure.suptitle("preservation against task loss: one curve per method (means over seeds per lr), seeds faint")
    figure.tight_layout()
    figure.savefig(root / "preservation.png", dpi=110)
    plt.close(figure)
