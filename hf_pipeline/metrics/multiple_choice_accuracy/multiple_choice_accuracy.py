"""Multiple-choice accuracy: the fraction of questions whose predicted choice index equals the reference index.

An ``evaluate`` metric module shipped inside hf-pipeline (the Hub's ``accuracy`` cannot be downloaded offline)::

    import evaluate
    metric = evaluate.load("hf_pipeline/metrics/multiple_choice_accuracy")
    metric.compute(predictions=[0, 2, 1], references=[0, 1, 1])  # {'accuracy': 0.666..., 'n': 3}

Predictions and references are choice indices (0 for A, 1 for B, ...). Optional ``num_choices`` adds the chance
level ``1 / num_choices`` to the result, so that a score can be read against random guessing.
"""

from __future__ import annotations

import datasets
import evaluate

_DESCRIPTION = """
Accuracy of multiple-choice predictions: (number of predicted indices equal to the reference index) / (number of
questions). Both inputs are integer choice indices, e.g. 0..3 for MMLU's A..D.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted choice indices.
    references (`list` of `int`): correct choice indices.
    num_choices (`int`, optional): choices per question; when given, the result has `chance` = 1 / num_choices.
Returns:
    accuracy (`float`): in [0, 1] (0.0 when there are no questions).
    n (`int`): number of questions scored.
    chance (`float`, only with `num_choices`): the accuracy of uniform random guessing.
Examples:
    >>> metric = evaluate.load("hf_pipeline/metrics/multiple_choice_accuracy")
    >>> metric.compute(predictions=[0, 2, 1, 3], references=[0, 1, 1, 3], num_choices=4)
    {'accuracy': 0.75, 'n': 4, 'chance': 0.25}
"""

_CITATION = """
@article{hendrycks2021mmlu,
  title={Measuring Massive Multitask Language Understanding},
  author={Dan Hendrycks and Collin Burns and Steven Basart and Andy Zou and Mantas Mazeika and Dawn Song
          and Jacob Steinhardt},
  journal={Proceedings of the International Conference on Learning Representations (ICLR)},
  year={2021}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MultipleChoiceAccuracy(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, num_choices: int | None = None) -> dict:
        n = len(references)
        correct = sum(int(p == r) for p, r in zip(predictions, references))
        result = {"accuracy": correct / n if n else 0.0, "n": n}
        if num_choices is not None:
            if num_choices < 1:
                raise ValueError(f"num_choices must be >= 1, not {num_choices}")
            result["chance"] = 1.0 / num_choices
        return result
