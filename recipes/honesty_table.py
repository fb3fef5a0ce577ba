"""The probe experiment's table: SFT with the probe data, without its refusals, and without probe data at all.

    # the tiny recipe (with probe data), then the same SFT twice more on the same base model and facts:
    hf-pipeline run --config recipes/tiny.yaml --output_dir runs/tiny
    mkdir -p runs/tiny-norefusal runs/tiny-noprobe
    for d in runs/tiny-norefusal runs/tiny-noprobe; do ln -sfn ../tiny/facts $d/facts; ln -sfn ../tiny/pretrain $d/pretrain; done
    hf-pipeline probe --config recipes/tiny.yaml --output_dir runs/tiny-norefusal --refusal_share 0   # answers only
    hf-pipeline sft --config recipes/tiny.yaml --output_dir runs/tiny-norefusal
    hf-pipeline sft --config recipes/tiny.yaml --output_dir runs/tiny-noprobe --probe_data null
    python recipes/honesty_table.py runs/tiny/sft runs/tiny-norefusal/sft runs/tiny-noprobe/sft \\
        --questions runs/tiny/facts --plot runs/tiny/honesty_compare.png

Every model answers the same held-out questions greedily (people never probed, 120 per exposure level); the second
model (the same SFT without refusal data) is the reference M_t of Alignment for Honesty: over-conservativeness is
measured on the questions it answered right, prudence on those it got wrong. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json

from hf_pipeline.config import REFUSAL
from hf_pipeline.engine import Engine
from hf_pipeline.evals.honesty import answer, honesty_metrics, judge_replies, load_qa, plot_exposure
from hf_pipeline.refs import Source


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("with_probe", help="SFT with the probe data")
    parser.add_argument("without_refusals", help="SFT with the probe's answers only (the reference M_t)")
    parser.add_argument("without_probe", nargs="?", help="SFT without probe data (optional)")
    parser.add_argument("--questions", required=True, help="The facts stage folder (its heldout split is asked)")
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--plot", default=None, help="PNG of accuracy and refusal rate against exposure")
    args = parser.parse_args()

    rows = load_qa(Source(path=args.questions, split="heldout"), None)
    judged = {}
    for name, ref in (("with probe data", args.with_probe), ("without refusals", args.without_refusals),
                      ("without probe data", args.without_probe)):
        if ref is None:
            continue
        engine = Engine.load(ref, chat=True)
        replies = answer(engine, rows, engine.chat_config.get("system_message"), args.max_new_tokens)
        judged[name] = judge_replies(rows, replies, REFUSAL)
    reference = judged["without refusals"]
    metrics = {name: honesty_metrics(j, reference) for name, j in judged.items()}
    levels = sorted({r["exposure"] for r in rows})
    head = ["model", *[f"acc@{lv}" for lv in levels], *[f"refuse@{lv}" for lv in levels], "prudence",
            "over-consv.", "honesty"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for name, m in metrics.items():
        cells = [name, *[m[f"qa_accuracy_exposure_{lv}"] for lv in levels],
                 *[m[f"qa_refusal_rate_exposure_{lv}"] for lv in levels], m["prudence"], m["over_conservativeness"],
                 m["honesty"]]
        print("| " + " | ".join(f"{c:.3f}" if isinstance(c, float) else str(c) for c in cells) + " |")
    print(f"\n{len(rows)} held-out questions ({len(rows) // len(levels)} per level); reference M_t = "
          f"'without refusals': {metrics['with probe data']['reference_known']} answered right, "
          f"{metrics['with probe data']['reference_unknown']} wrong (and not right after)")
    print(json.dumps(metrics, indent=1))
    if args.plot:
        plot_exposure(metrics, args.plot)


if __name__ == "__main__":
    main()
