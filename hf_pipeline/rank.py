"""Rank stage: K rollouts per prompt from the SFT model, ranked by a person or a judge, written as preference pairs.

    prompts (generated "Write a sentence about X." requests, held-out topics apart; or a dataset's prompt column)
    -> K replies per prompt sampled from the model (RUN/sft by default) -> rollouts.jsonl
    -> a ranking per prompt (1 = best, ties share a rank) -> rankings.jsonl, appended as each prompt is ranked:
         judge: NAME        a scripted labeller fills them (hf_pipeline.preferences.resolve_judge: gold, a
                            module:function, or a reward model folder)
         ui: terminal       a person types an order, best first ("3 1 4 2", ties "3=1 4 2", s skips, q stops)
         ui: web            the same on a local page (hf-pipeline rank --ui web prints its address)
         rankings: FILE     rankings made elsewhere ({"id", "ranks"} per line), checked against the rollouts
    -> pairs: every two rollouts of a prompt with different ranks (chosen, rejected, margin = rank distance)
    -> RUN/rank/: a DatasetDict (train / test, split by prompt: a prompt's pairs are never on both sides) with
       prompt / chosen / rejected (chat messages, TRL's conversational format), margin, prompt_id; rollouts.jsonl,
       rankings.jsonl, metrics.json, config.yaml

A person's ranking can stop at any time (``q``, Ctrl-C, closing the page): what was ranked is kept in
``RUN/rank.incomplete/rankings.jsonl``, and running the stage again picks up at the first unranked prompt (with the
same rollouts); a skipped prompt is offered again then. The stage completes once every prompt is ranked, or with
``skip_unranked: true`` with the pairs of what is ranked.

Usage::

    hf-pipeline rank --config recipes/tiny.yaml --output_dir runs/tiny            # the recipe's gold judge
    hf-pipeline rank --output_dir runs/tiny --judge none --ui terminal --num_prompts 40
    hf-pipeline rank --output_dir runs/tiny --judge none --ui web --port 8765

metrics.json: prompts (train / test), rollouts, ranked, skipped, pairs_train / pairs_test, tied_pairs,
rollouts_finished (share that ended their turn), judge_mean (the judge's mean rollout score, with a judge),
annotators; seconds per phase.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections import Counter
from pathlib import Path

from .config import ConfigError, RankConfig, config_to_dict

logger = logging.getLogger("hf_pipeline")

ROLLOUTS, RANKINGS = "rollouts.jsonl", "rankings.jsonl"
RANKING_SESSION = ("ui", "host", "port", "annotator", "judge", "rankings", "skip_unranked", "margin")


def load_prompts(config: RankConfig, system: str | None) -> list[dict]:
    """``{"id", "prompt" (messages), "split"}`` per prompt: generated, or a dataset's ``prompt_column``."""
    from .preferences import generated_prompts, prompt_id, prompt_messages, topic_split

    if config.prompts == "generated":
        rows = generated_prompts(config.num_prompts, config.heldout_fraction, config.seed)
    else:
        from .refs import open_dataset

        data = open_dataset(config.prompts, config.mirror, what="rank.prompts")
        if config.prompt_column not in data.column_names:
            raise ConfigError(f"rank.prompts: {config.prompts} has no '{config.prompt_column}' column "
                              f"(columns: {', '.join(data.column_names)})")
        texts = list(dict.fromkeys(t.strip() for t in data[config.prompt_column] if isinstance(t, str) and t.strip()))
        rows = [{"id": prompt_id(t), "prompt": t, "split": topic_split(t, config.heldout_fraction)}
                for t in texts[:config.num_prompts]]
    return [{**row, "prompt": prompt_messages(row["prompt"], system)} for row in rows]


def roll_out(config: RankConfig, work: Path) -> dict[str, dict]:
    """K sampled replies per prompt, written to rollouts.jsonl (read back from it when resuming)."""
    from tqdm.auto import tqdm

    from .engine import Engine, SamplingParams

    path = work / ROLLOUTS
    if path.is_file():
        rollouts = [json.loads(line) for line in path.read_text().splitlines()]
        logger.info("rank: %d prompts' rollouts read back from %s", len(rollouts), path)
        return {r["id"]: r for r in rollouts}
    engine = Engine.load(config.input_ref("model"), chat=True)
    prompts = load_prompts(config, engine.chat_config.get("system_message"))
    logger.info("rank: %d prompts (%d held out) x %d rollouts from %s, temperature %g, %d tokens", len(prompts),
                sum(p["split"] == "test" for p in prompts), config.k, engine.path, config.temperature,
                config.max_new_tokens)
    sampling = SamplingParams(max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                              top_p=config.top_p, seed=config.seed)
    rollouts, chunk = {}, max(1, config.batch_size // config.k)
    with open(path.with_suffix(".partial"), "w") as out:
        for start in tqdm(range(0, len(prompts), chunk), desc="rank: rollouts", unit="batch"):
            rows = prompts[start:start + chunk]
            replies = engine.reply([row["prompt"] for row in rows for _ in range(config.k)], sampling,
                                   batch_size=config.batch_size)
            for i, row in enumerate(rows):
                mine = replies[i * config.k:(i + 1) * config.k]
                rollouts[row["id"]] = {**row, "completions": [r["reply"] for r in mine],
                                       "stopped": [r["stopped"] for r in mine], "tokens": [r["tokens"] for r in mine]}
                out.write(json.dumps(rollouts[row["id"]]) + "\n")
            sampling = dataclasses.replace(sampling, seed=None)  # seeded once, then the stream goes on
    path.with_suffix(".partial").rename(path)  # complete, or read again from the start
    return rollouts


def rank_by_judge(config: RankConfig, todo: list[dict], save) -> None:
    """Rank every rollout group by the judge's scores (ties share a rank)."""
    from .preferences import prompt_text, ranks_from_scores, resolve_judge

    judge = resolve_judge(config.judge, what="rank.judge")
    texts = [prompt_text(r["prompt"]) for r in todo for _ in r["completions"]]
    scores = judge(texts, [c for r in todo for c in r["completions"]], [s for r in todo for s in r["stopped"]])
    for i, row in enumerate(todo):
        mine = [float(s) for s in scores[i * config.k:(i + 1) * config.k]]
        save({"id": row["id"], "ranks": ranks_from_scores(mine), "annotator": f"judge:{config.judge}",
              "scores": mine})


def rank_by_person(config: RankConfig, todo: list[dict], save) -> None:
    """A person ranks the rollouts in the terminal or on a local web page."""
    from . import ranking_ui
    from .preferences import prompt_text

    items = [{"id": r["id"], "prompt": prompt_text(r["prompt"]), "completions": r["completions"]} for r in todo]
    if config.ui == "web":
        ranking_ui.serve_ranking_page(items, save, host=config.host, port=config.port, annotator=config.annotator)
    else:
        ranking_ui.rank_in_terminal(items, save, annotator=config.annotator)


def make_pairs(rollouts: dict[str, dict], rankings: list[dict], use_margin: bool, stats: Counter):
    """The DatasetDict of pairs (train / test by the prompts' split)."""
    import datasets

    from .preferences import ranking_pairs

    rows = {"train": [], "test": []}
    for ranking in rankings:
        rollout = rollouts[ranking["id"]]
        pairs, ties = ranking_pairs(rollout["completions"], ranking["ranks"])
        stats["tied_pairs"] += ties
        stats["all_tied"] += not pairs
        for better, worse, distance in pairs:
            rows[rollout["split"]].append({
                "prompt": rollout["prompt"],
                "chosen": [{"role": "assistant", "content": rollout["completions"][better]}],
                "rejected": [{"role": "assistant", "content": rollout["completions"][worse]}],
                "margin": float(distance) if use_margin else 0.0, "prompt_id": ranking["id"],
            })
    return datasets.DatasetDict({split: datasets.Dataset.from_list(r) if r else datasets.Dataset.from_dict(
        {"prompt": [], "chosen": [], "rejected": [], "margin": [], "prompt_id": []}) for split, r in rows.items()})


def run(config: RankConfig) -> Path:
    """Roll out, rank and write RUN/rank/."""
    from .artifacts import finish_stage, is_complete, resume_or_start, write_json
    from .preferences import read_rankings

    final = config.stage_dir()
    if is_complete(final) and not config.overwrite:
        logger.info("rank: %s is complete, skipping (overwrite: true to redo it)", final)
        return final
    start = time.time()
    # a resumed ranking keeps its rollouts; who ranks the rest, and how, may change (the annotator is recorded)
    settings = {k: v for k, v in config_to_dict(config).items() if k not in RANKING_SESSION}
    work, _ = resume_or_start(final, settings, config.resume and not config.overwrite, progress_file=ROLLOUTS)
    rollouts = roll_out(config, work)
    rollout_seconds = time.time() - start

    stats: Counter = Counter()
    rankings_file = work / RANKINGS
    done = read_rankings(rankings_file, rollouts, stats) if rankings_file.is_file() else []
    if config.rankings:
        imported = read_rankings(Path(config.rankings), rollouts, stats)
        logger.info("rank: %d rankings read from %s", len(imported), config.rankings)
        known = {r["id"] for r in imported}
        done = [r for r in done if r["id"] not in known] + imported
        rankings_file.write_text("".join(json.dumps(r) + "\n" for r in done))
    ranked = {r["id"] for r in done}
    todo = [r for r in rollouts.values() if r["id"] not in ranked]
    if done and todo:
        logger.info("rank: resuming, %d of %d prompts ranked", len(done), len(rollouts))

    with rankings_file.open("a") as out:
        def save(ranking: dict) -> None:  # one line per ranked prompt, flushed: an interrupted session keeps it
            out.write(json.dumps({**ranking, "time": round(time.time(), 3)}) + "\n")
            out.flush()

        if todo and config.judge:
            rank_by_judge(config, todo, save)
        elif todo and not config.rankings:
            try:
                rank_by_person(config, todo, save)
            except KeyboardInterrupt:
                logger.info("rank: interrupted")
    done = read_rankings(rankings_file, rollouts, stats)
    left = [r for r in rollouts.values() if r["id"] not in {d["id"] for d in done}]
    if left and not config.skip_unranked:
        raise ConfigError(f"rank: {len(done)} of {len(rollouts)} prompts ranked, kept in {rankings_file}; run "
                          f"the same command again to go on (or --skip_unranked true to make pairs of what is ranked)")
    stats["skipped"] = len(left)

    pairs = make_pairs(rollouts, done, config.margin, stats)
    pairs.save_to_disk(str(work))
    finished = [s for r in rollouts.values() for s in r["stopped"]]
    scores = [s for r in done for s in r.get("scores", [])]
    metrics = {
        "prompts": len(rollouts), "prompts_test": sum(r["split"] == "test" for r in rollouts.values()),
        "k": config.k, "rollouts": len(finished), "ranked": len(done), "skipped": stats["skipped"],
        "pairs_train": len(pairs["train"]), "pairs_test": len(pairs["test"]),
        "tied_pairs": stats["tied_pairs"], "all_tied": stats["all_tied"], "reranked": stats["reranked"],
        "rollouts_finished": sum(finished) / len(finished) if finished else None,
        "judge": config.judge, "judge_mean": sum(scores) / len(scores) if scores else None,
        "annotators": dict(Counter(r.get("annotator", "unknown") for r in done)),
        "rollout_seconds": round(rollout_seconds, 1), "wall_time_s": round(time.time() - start, 1),
    }
    write_json(work / "metrics.json", metrics)
    finish_stage(work, final)
    logger.info("rank: %d prompts ranked (%d skipped), %d pairs train / %d test (%d tied pairs left out) -> %s",
                metrics["ranked"], metrics["skipped"], metrics["pairs_train"], metrics["pairs_test"],
                metrics["tied_pairs"], final)
    return final
