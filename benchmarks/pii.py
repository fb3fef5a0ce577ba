"""PII detection: span-level precision and recall of emails, IP addresses and phone numbers on labelled text.

    python benchmarks/pii.py --dataset ../shared/data/pii/presidio_synth_dev.json [--show-errors]

The dataset is in Presidio's evaluation format: a JSON list of ``{"full_text": ..., "spans": [{"entity_type",
"entity_value", "start_position", "end_position"}, ...]}``. Only EMAIL_ADDRESS, PHONE_NUMBER and IP_ADDRESS are
scored (other labels, e.g. CREDIT_CARD, US_SSN, DATE_TIME, STREET_ADDRESS, count as text that must not be taken).

Criterion (span level, overlap): a predicted span is a true positive when it overlaps (shares at least one character
with) a gold span of the same type; precision = such predictions / all predictions of the type. A gold span is
recalled when some prediction of the same type overlaps it; recall = recalled gold spans / gold spans of the type.
(A type with no predictions has precision 1.000 by convention, shown with its counts.)

Prints per type the gold/predicted/correct/found counts, the errors (``missed`` gold spans = gold - found, ``false``
predictions = predicted - correct), precision, recall and F1, documents per second for ``find_pii``, and
last: ``pii precision email=<p> phone=<p> ip=<p> recall email=<r> phone=<r> ip=<r>``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hf_pipeline.data.pii import EMAIL, IP, PHONE, PRESIDIO_NAMES, find_pii  # noqa: E402

TYPES = (EMAIL, PHONE, IP)


def overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", required=True, help="JSON list in Presidio's format (full_text, spans)")
    p.add_argument("--show-errors", action="store_true", help="print every missed gold span and wrong prediction")
    args = p.parse_args()
    records = json.loads(Path(args.dataset).read_text(encoding="utf-8"))
    names = {presidio: ours for ours, presidio in PRESIDIO_NAMES.items()}

    start = time.perf_counter()
    predictions = [find_pii(r["full_text"]) for r in records]
    elapsed = time.perf_counter() - start

    gold_n, pred_n, pred_ok, gold_found = ({t: 0 for t in TYPES} for _ in range(4))
    errors = []
    for record, predicted in zip(records, predictions):
        text = record["full_text"]
        gold = [(names[s["entity_type"]], s["start_position"], s["end_position"])
                for s in record["spans"] if s["entity_type"] in names]
        for kind, s, e in predicted:
            pred_n[kind] += 1
            hit = any(k == kind and overlaps((s, e), (gs, ge)) for k, gs, ge in gold)
            pred_ok[kind] += hit
            if not hit:
                others = [x["entity_type"] for x in record["spans"]
                          if overlaps((s, e), (x["start_position"], x["end_position"]))]
                errors.append(f"false {kind}: {text[s:e]!r} (gold there: {others or 'nothing'})")
        for kind, s, e in gold:
            gold_n[kind] += 1
            found = any(k == kind and overlaps((s, e), (ps, pe)) for k, ps, pe in predicted)
            gold_found[kind] += found
            if not found:
                errors.append(f"missed {kind}: {text[s:e]!r} in {text[max(0, s - 40):e + 20]!r}")

    precision = {t: pred_ok[t] / pred_n[t] if pred_n[t] else 1.0 for t in TYPES}
    recall = {t: gold_found[t] / gold_n[t] if gold_n[t] else 1.0 for t in TYPES}
    f1 = {t: 2 * precision[t] * recall[t] / (precision[t] + recall[t]) if precision[t] + recall[t] else 0.0
          for t in TYPES}
    print(f"{len(records)} documents, {sum(len(r['full_text']) for r in records)} characters; "
          "span-level, a prediction is right when it overlaps a gold span of its type")
    for t in TYPES:
        print(f"{PRESIDIO_NAMES[t]:14s} gold={gold_n[t]:4d} predicted={pred_n[t]:4d} correct={pred_ok[t]:4d} "
              f"found={gold_found[t]:4d} missed={gold_n[t] - gold_found[t]:3d} false={pred_n[t] - pred_ok[t]:3d}  "
              f"precision={precision[t]:.3f} recall={recall[t]:.3f} f1={f1[t]:.3f}")
    if args.show_errors:
        print("\n".join(errors))
    print(f"find_pii: {len(records) / elapsed:.0f} docs/s ({elapsed:.3f} s)")
    print("pii precision " + " ".join(f"{t}={precision[t]:.3f}" for t in TYPES)
          + " recall " + " ".join(f"{t}={recall[t]:.3f}" for t in TYPES))


if __name__ == "__main__":
    main()
