"""How much an RL stage could gain on generated problems: a model's greedy and sampled accuracy, and why it misses.

    python recipes/problem_headroom.py --model runs/tiny/sft [--max_number 5] [--steps 1] [--n 200]

GRPO learns only from groups where some completions are right and others wrong, and at best moves greedy pass@1
towards what sampling already finds. On the held-out split of the generated problems (``problems.generate_problems``,
the dial as in the recipe) this prints:

* greedy pass@1, overall and per template;
* per temperature (0.5, 1.0): sampled accuracy, pass@8 and the share of problems whose 8 samples disagree (the
  groups GRPO can learn from);
* for one-step problems, the greedy replies' first equation ``a op b = c`` (``rewards.equations``) against the worked
  solution's: are the operands the ones in the question, and is ``c`` right (exactly) for the operands written?

Last line: ``headroom pass1=<p> pass8_t05=<p> pass8_t10=<p> operands_right=<share>``.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hf_pipeline.engine import Engine, SamplingParams  # noqa: E402
from hf_pipeline.problems import generate_problems  # noqa: E402
from hf_pipeline.rewards import equations, is_correct  # noqa: E402

SAMPLES = 8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model folder, run folder or Hub id (with a chat template)")
    parser.add_argument("--max_number", type=int, default=5)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--n", type=int, default=200, help="held-out problems")
    parser.add_argument("--max_new_tokens", type=int, default=40)
    args = parser.parse_args()

    engine = Engine.load(args.model, chat=True)
    test = generate_problems(args.n, seed=0, split="test", steps=args.steps, max_number=args.max_number)
    prompts, answers = list(test["prompt"]), list(test["answer"])

    replies = engine.reply(prompts, SamplingParams(max_new_tokens=args.max_new_tokens), batch_size=64)  # greedy
    greedy = [is_correct(r["reply"], a) for r, a in zip(replies, answers)]
    by_template = defaultdict(list)
    for source, right in zip(test["source"], greedy):
        by_template[source.split("/")[-1]].append(right)
    pass1 = sum(greedy) / len(greedy)
    print(f"greedy pass@1 {pass1:.3f}: " + ", ".join(f"{t} {sum(v) / len(v):.2f}" for t, v in by_template.items()))

    pass8 = {}
    for temperature in (0.5, 1.0):
        # SAMPLES samples per problem, drawn as hf_pipeline.evals.problems.pass_at_k draws pass@k
        sampling = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=temperature, top_k=0, top_p=1.0,
                                  seed=0)
        sampled = engine.reply([p for p in prompts for _ in range(SAMPLES)], sampling, batch_size=64)
        right = [sum(is_correct(sampled[i * SAMPLES + j]["reply"], answers[i]) for j in range(SAMPLES))
                 for i in range(len(prompts))]
        pass8[temperature] = sum(r > 0 for r in right) / len(right)
        print(f"temperature {temperature}: sampled accuracy {sum(right) / (SAMPLES * len(right)):.3f}, "
              f"pass@{SAMPLES} {pass8[temperature]:.3f}, groups with right and wrong samples "
              f"{sum(0 < r < SAMPLES for r in right) / len(right):.3f}")

    errors = Counter()
    for solution, reply in zip(test["solution"], replies):
        wanted, got = equations(solution), equations(reply["reply"])
        if not got:
            errors["no equation"] += 1
            continue
        expression, value, stated = got[0]
        operands = "operands right" if wanted and expression == wanted[0][0] else "operands wrong"
        errors[(operands, "result right" if value is not None and value == stated else "result wrong")] += 1
    for key, count in sorted(errors.items(), key=lambda kv: -kv[1]):
        print(f"  {count:4d}  {key if isinstance(key, str) else ', '.join(key)}")
    operands_right = sum(n for k, n in errors.items() if isinstance(k, tuple) and k[0] == "operands right")
    print(f"headroom pass1={pass1:.3f} pass8_t05={pass8[0.5]:.3f} pass8_t10={pass8[1.0]:.3f} "
          f"operands_right={operands_right / len(replies):.3f}")


if __name__ == "__main__":
    main()
