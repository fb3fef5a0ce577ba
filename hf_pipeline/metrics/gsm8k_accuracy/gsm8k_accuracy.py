"""GSM8K accuracy: the fraction of model outputs whose final numeric answer equals the reference answer.

An ``evaluate`` metric module shipped inside hf-pipeline (loadable offline, no Hub download)::

    from hf_pipeline.metrics import load_metric
    metric = load_metric("gsm8k_accuracy")  # = evaluate.load("hf_pipeline/metrics/gsm8k_accuracy")
    metric.compute(predictions=["... so 3 + 4 = 7.\\n#### 7"], references=["7"])
    # {'accuracy': 1.0, 'n': 1, 'no_answer_rate': 0.0, 'strict_accuracy': 1.0}

Answers are read with ``hf_pipeline.rewards`` (the same code that scores RL rollouts): a prediction's answer is its
``#### N`` line, else ``\\boxed{N}``, "the answer is N" or its last number; a reference is a bare number (``"1,234"``)
or a full GSM8K solution ending ``#### N``. ``strict_accuracy`` counts only answers given in the ``#### N`` format.
"""

from __future__ import annotations

import datasets
import evaluate

from hf_pipeline.rewards import extract_answer, is_correct, numbers_equal, reference_answer

_DESCRIPTION = """
Accuracy on math word problems with numeric answers (GSM8K and hf-pipeline's generated problems): (number of
predictions whose extracted final answer equals the reference numerically) / (number of problems). Numbers are
compared exactly (1,234 == 1234, 3.50 == 3.5, $12 == 12).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): model outputs (full worked solutions or bare answers).
    references (`list` of `str`): reference answers, bare ("72", "1,234") or full GSM8K answers ending "#### 72".
Returns:
    accuracy (`float`): in [0, 1], lenient extraction (#### line, else \\boxed{}, "answer is", last number).
    strict_accuracy (`float`): in [0, 1], only answers stated on a "#### N" line count.
    no_answer_rate (`float`): fraction of predictions with no number to extract.
    n (`int`): number of problems scored.
Examples:
    >>> metric = evaluate.load("hf_pipeline/metrics/gsm8k_accuracy")
    >>> metric.compute(predictions=["#### 72", "The answer is 10.", "no idea"], references=["72", "#### 11", "3"])
    {'accuracy': 0.3333333333333333, 'n': 3, 'no_answer_rate': 0.3333333333333333, 'strict_accuracy': 0.3333333333333333}
"""

_CITATION = """
@article{cobbe2021gsm8k,
  title={Training Verifiers to Solve Math Word Problems},
  author={Cobbe, Karl and Kosaraju, Vineet and Bavarian, Mohammad and Chen, Mark and Jun, Heewoo and Kaiser, Lukasz and Plappert, Matthias and Tworek, Jerry and Hilton, Jacob and Nakano, Reiichiro and Hesse, Christopher and Schulman, John},
  journal={arXiv preprint arXiv:2110.14168},
  year={2021}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Gsm8kAccuracy(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references) -> dict:
        n = len(references)
        correct = strict_correct = no_answer = 0
        for prediction, reference in zip(predictions, references):
            if reference_answer(reference) is None:
                raise ValueError(f"reference is not a number nor a GSM8K answer ending '#### N': {reference!r}")
            correct += is_correct(prediction or "", reference)
            strict_correct += numbers_equal(extract_answer(prediction, strict=True), reference_answer(reference))
            no_answer += extract_answer(prediction) is None
        if not n:
            return {"accuracy": 0.0, "n": 0, "no_answer_rate": 0.0, "strict_accuracy": 0.0}
        return {"accuracy": correct / n, "n": n, "no_answer_rate": no_answer / n, "strict_accuracy": strict_correct / n}
