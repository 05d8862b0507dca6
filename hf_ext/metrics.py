"""Classification scores as an ``evaluate`` metric that needs no download: accuracy and macro-F1.

``evaluate.load("accuracy")`` fetches its script from the Hub, which an offline run cannot do; this
metric is built in and has the same interface (``add_batch``, ``compute``).
"""

from __future__ import annotations

import datasets
import evaluate
import numpy as np


class ClassificationScores(evaluate.Metric):
    """Accuracy and macro-F1 (F1 averaged over the classes that occur in references or predictions, as
    scikit-learn's ``f1_score(average="macro")``; a class never predicted scores F1 0)."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="accuracy and macro-averaged F1 of class predictions",
            citation="",
            inputs_description="predictions and references: class indices (int)",
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references) -> dict[str, float]:
        predicted, true = np.asarray(predictions), np.asarray(references)
        scores = []
        for label in np.union1d(predicted, true):
            hits = np.sum((predicted == label) & (true == label))
            denominator = np.sum(predicted == label) + np.sum(true == label)
            scores.append(2 * hits / denominator)
        return {"accuracy": float(np.mean(predicted == true)), "macro_f1": float(np.mean(scores))}
