"""The base model's psychology, shown on a pretrained model: stochastic, a regurgitator, a few-shot learner.

    python recipes/base_model_demos.py --model runs/tiny

1. Stochastic: the same prompt, two seeds, two different continuations: the model is a distribution over text.
2. Regurgitation: a passage seen many times in training (the tiny recipe repeats one short document 100 times per epoch, as
   popular pages recur in web crawls) is recited verbatim from its first words; a passage never seen is not.
   Measured as the longest verbatim match (in characters) between the greedy continuation and the training text.
3. Few-shot prompting: with a few question/answer examples in the prompt, the model answers in the same format and
   goes on to the next question, without any training: in-context learning. Measured as the share of sampled
   continuations that keep the format, with the examples and without them.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hf_pipeline.engine import Engine, SamplingParams  # noqa: E402
from hf_pipeline.evals.text import longest_verbatim_match  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "text"
SEEN = DATA / "tinystories_sample.txt"  # weight 100 in recipes/tiny.yaml
SEEN_PROMPT = "Once upon a time there was a little boy named Ben."
UNSEEN_PROMPT = "The committee met on Tuesday to discuss the budget for the new library."
FEW_SHOT = (
    "Q: What is the capital of France?\nA: Paris\n"
    "Q: What is the capital of Spain?\nA: Madrid\n"
    "Q: What is the capital of Italy?\nA:"
)
ZERO_SHOT = "What is the capital of Italy?"


def keeps_format(continuation: str) -> bool:
    """A short answer on its line, then the next question: the Q/A pattern continued."""
    return bool(re.match(r"^ ?[^\n]{1,40}\nQ: ", continuation))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="runs/tiny", help="model folder, run folder or Hub id")
    p.add_argument("--samples", type=int, default=10, help="samples per prompt for the few-shot measurement")
    args = p.parse_args()
    engine = Engine.load(args.model)

    print("== 1. stochastic: one prompt, two seeds")
    for seed in (1, 2):
        text = engine.complete("ROMEO:\n", SamplingParams(max_new_tokens=40, temperature=1.0, top_k=50, seed=seed))
        print(f"-- seed {seed}: ROMEO:\n{text}\n")

    print("== 2. regurgitation: greedy continuation, longest verbatim match with the training text")
    seen_text = SEEN.read_text()
    for name, prompt in (("seen ~75x", SEEN_PROMPT), ("never seen", UNSEEN_PROMPT)):
        text = engine.complete(prompt, SamplingParams(max_new_tokens=80, temperature=0))
        match = longest_verbatim_match(text, seen_text)
        print(f"-- {name}: {prompt}{text}\n   longest verbatim match: {len(match)} characters: {match[:120]!r}\n")

    print("== 3. few-shot prompting: does the continuation keep the pattern?")
    for name, prompt in (("few-shot", FEW_SHOT), ("zero-shot", ZERO_SHOT)):
        outs = [engine.complete(prompt, SamplingParams(max_new_tokens=16, temperature=0.7, seed=s)) for s in range(args.samples)]
        kept = sum(keeps_format(o) for o in outs)
        print(f"-- {name}: {kept}/{len(outs)} continuations answer on one line then ask the next 'Q: '; "
              f"e.g. ...{prompt[-16:]!r} + {outs[0]!r}")


if __name__ == "__main__":
    main()
