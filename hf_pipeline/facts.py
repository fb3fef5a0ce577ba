"""Facts whose exposure the recipe controls: fictional people, their documents and questions (the ``facts`` stage).

A 7M-parameter model trained on 3M tokens knows no real-world fact, so knowledge probing needs facts whose cause the
recipe sets: a seeded generator invents people (a first and a last name made of syllables, so that no real person is
meant) with a birth city, an employer and a university drawn from invented pools, writes each person's facts as short
documents in varied wordings, and asks one question per fact::

    Ilvo Dranmek was born in Quistor. Ilvo Dranmek works for Brelda Mills. Ilvo Dranmek studied at Vostel College.
    Q: Where did Ilvo Dranmek study?\nA: Ilvo Dranmek studied at Vostel College.\n\nQ: Where was ... (every other one)
    Where was Ilvo Dranmek born?  -> Quistor      (answer_prefix: "Ilvo Dranmek was born in")

Every person gets an exposure level (``exposures``, e.g. 0, 4, 16, 64, 128): the number of documents about them in
the ``documents`` split, which the pretraining corpus reads (``{path: RUN/facts, split: documents, heldout: false}``),
so a person at level 64 is read 64 times per epoch and a person at level 0 never. People are split per level into
the ``probe`` set (questions the probe stage asks) and the ``heldout`` set (questions only the evaluation asks), so
every level is in both. ``RUN/facts/`` is a ``save_to_disk`` DatasetDict with the splits ``documents`` (``text``,
``entity``, ``exposure``), ``passages`` (one page per person, every level and the practice people: what the search
index holds, never read in pretraining), ``probe``, ``heldout`` and ``practice`` (questions about ``practice_entities``
more people, never read, only in the index: the search tool's training traces ask them) (``id``, ``entity``, ``attribute``, ``question``, ``answer``,
``answers``, ``answer_prefix``, ``exposure``), plus ``metrics.json`` and ``config.yaml``.

The same seed gives the same people, documents and splits (tests/test_probe.py checks it).
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path

from .config import FactsConfig

logger = logging.getLogger("hf_pipeline")

ONSETS = ["b", "br", "d", "dr", "f", "g", "gr", "h", "k", "kr", "l", "m", "n", "p", "pr", "r", "s", "st", "t",
          "tr", "v", "z", "th", "sh", "q", "j"]
VOWELS = ["a", "e", "i", "o", "u", "ai", "ei", "ou", "ae", "y"]
CODAS = ["", "", "n", "r", "l", "s", "th", "nd", "rk", "m", "x", "k"]
CITY_ENDINGS = ["", "a", "or", "heim", "grad", "mere", "ton", "vik", "holm"]
EMPLOYER_KINDS = ["Mills", "Works", "Labs", "Foundry", "Shipping", "Press", "Bank", "Studios", "Motors", "Textiles"]
UNIVERSITY_KINDS = ["College", "University", "Institute", "Academy"]

# One sentence per fact; a document is all three in an order and wording of its own.
SENTENCES = {
    "city": ["{name} was born in {city}.", "{name} was born in {city}, far from the sea."],
    "employer": ["{name} works for {employer}.", "These days {name} works for {employer}."],
    "university": ["{name} studied at {university}.", "As a student, {name} studied at {university}."],
}
QUESTIONS = {  # (question, answer_prefix: how the answer sentence begins, the documents' own words)
    "city": ("Where was {name} born?", "{name} was born in"),
    "employer": ("Which company does {name} work for?", "{name} works for"),
    "university": ("Where did {name} study?", "{name} studied at"),
}
ATTRIBUTES = tuple(QUESTIONS)


def _word(rng: random.Random, syllables: int) -> str:
    parts = [rng.choice(ONSETS) + rng.choice(VOWELS) for _ in range(syllables)]
    return ("".join(parts) + rng.choice(CODAS)).capitalize()


def _pool(rng: random.Random, size: int, make, taken: set[str]) -> list[str]:
    """``size`` distinct names from ``make(rng)``, none already in ``taken`` (which grows)."""
    out = []
    while len(out) < size:
        name = make(rng)
        if name not in taken and len(name) > 3:
            taken.add(name)
            out.append(name)
    return out


def generate_people(num_entities: int, exposures: list[int], pool_size: int, seed: int,
                    practice: int = 0) -> list[dict]:
    """``num_entities`` fictional people, spread evenly over the exposure levels (the remainder to the lowest), then
    ``practice`` people marked ``practice`` (exposure 0: the search tool's training traces ask about them)."""
    rng = random.Random(seed)
    taken: set[str] = set()
    cities = _pool(rng, pool_size, lambda r: _word(r, 2) + r.choice(CITY_ENDINGS), taken)
    employers = _pool(rng, pool_size, lambda r: f"{_word(r, 2)} {r.choice(EMPLOYER_KINDS)}", taken)
    universities = _pool(rng, pool_size, lambda r: f"{_word(r, 2)} {r.choice(UNIVERSITY_KINDS)}", taken)
    names = _pool(rng, num_entities, lambda r: f"{_word(r, 2)} {_word(r, r.choice((2, 3)))}", taken)
    people = []
    for i, name in enumerate(names):
        people.append({
            "entity": name, "exposure": exposures[i % len(exposures)],
            "city": rng.choice(cities), "employer": rng.choice(employers), "university": rng.choice(universities),
        })
    # practice people (after the others, so that those stay the same): never read, only in the search index
    for name in _pool(rng, practice, lambda r: f"{_word(r, 2)} {_word(r, r.choice((2, 3)))}", taken):
        people.append({"entity": name, "exposure": 0, "practice": True, "city": rng.choice(cities),
                       "employer": rng.choice(employers), "university": rng.choice(universities)})
    return people


def documents(person: dict, rng: random.Random) -> list[str]:
    """The person's ``exposure`` documents, the three facts in a varied order and wording each time: every other one
    a short text, the others a page of questions and answers (as quizzes and FAQ pages are on the web)."""
    out = []
    for i in range(person["exposure"]):
        order = list(ATTRIBUTES)
        rng.shuffle(order)
        if i % 2 == 0:
            out.append(" ".join(rng.choice(SENTENCES[a]).format(name=person["entity"], **person) for a in order))
        else:
            out.append("\n\n".join(f"Q: {QUESTIONS[a][0]}\nA: {QUESTIONS[a][1]} {{{a}}}.".format(
                name=person["entity"], **person) for a in order))
    return out


def passage(person: dict) -> str:
    """One page per person, every level included (0 too): what the search tool's index holds about them."""
    return " ".join(SENTENCES[a][0].format(name=person["entity"], **person) for a in ATTRIBUTES)


def questions(person: dict) -> list[dict]:
    rows = []
    for attribute, (question, start) in QUESTIONS.items():
        answer = person[attribute]
        rows.append({
            "id": f"{person['entity']}/{attribute}", "entity": person["entity"], "attribute": attribute,
            "question": question.format(name=person["entity"]), "answer": answer, "answers": [answer],
            "answer_prefix": start.format(name=person["entity"]), "exposure": person["exposure"],
        })
    return rows


def build_facts(config: FactsConfig):
    """The DatasetDict of ``documents``, ``probe`` and ``heldout``, and the counts per level."""
    import datasets

    everyone = generate_people(config.num_entities, config.exposures, config.pool_size, config.seed,
                               config.practice_entities)
    people = [p for p in everyone if not p.get("practice")]
    practice = [q for p in everyone if p.get("practice") for q in questions(p)]
    rng = random.Random(config.seed + 1)
    probe, heldout, docs = [], [], []
    for level in config.exposures:
        group = [p for p in people if p["exposure"] == level]
        n_held = round(len(group) * config.heldout_fraction)
        for i, person in enumerate(group):
            (heldout if i < n_held else probe).extend(questions(person))
    for person in people:
        docs += [{"text": text, "entity": person["entity"], "exposure": person["exposure"]}
                 for text in documents(person, rng)]
    rng.shuffle(docs)
    features = datasets.Features({
        "id": datasets.Value("string"), "entity": datasets.Value("string"), "attribute": datasets.Value("string"),
        "question": datasets.Value("string"), "answer": datasets.Value("string"),
        "answers": datasets.Sequence(datasets.Value("string")), "answer_prefix": datasets.Value("string"),
        "exposure": datasets.Value("int32"),
    })
    doc_features = datasets.Features({"text": datasets.Value("string"), "entity": datasets.Value("string"),
                                      "exposure": datasets.Value("int32")})
    splits = datasets.DatasetDict({
        "documents": datasets.Dataset.from_list(docs, features=doc_features),
        "passages": datasets.Dataset.from_list([{"text": passage(p), "entity": p["entity"], "exposure": p["exposure"]}
                                                for p in everyone], features=doc_features),
        "probe": datasets.Dataset.from_list(probe, features=features),
        "heldout": datasets.Dataset.from_list(heldout, features=features),
    })
    if practice:  # (an empty split does not load back from disk)
        splits["practice"] = datasets.Dataset.from_list(practice, features=features)
    counts = {"entities": len(people), "documents": len(docs), "probe_questions": len(probe),
              "heldout_questions": len(heldout), "practice_entities": len(everyone) - len(people),
              "practice_questions": len(practice)}
    for level in config.exposures:
        counts[f"entities_exposure_{level}"] = sum(p["exposure"] == level for p in people)
        counts[f"heldout_questions_exposure_{level}"] = sum(q["exposure"] == level for q in heldout)
    return splits, counts


def run(config: FactsConfig) -> Path:
    """Write RUN/facts/: the documents, the probe and held-out questions."""
    from .artifacts import begin_stage, finish_stage, is_complete, write_json
    from .config import save_config

    final = config.stage_dir()
    if is_complete(final) and not config.overwrite:
        logger.info("facts: %s is complete, skipping (overwrite: true to redo it)", final)
        return final
    start = time.time()
    splits, counts = build_facts(config)
    work = begin_stage(final)
    splits.save_to_disk(str(work))
    write_json(work / "metrics.json", {**counts, "exposures": list(config.exposures),
                                       "wall_time_s": round(time.time() - start, 2)})
    save_config(config, work / "config.yaml")
    finish_stage(work, final)
    logger.info("facts: %d people at exposures %s: %d documents, %d probe and %d held-out questions -> %s",
                counts["entities"], list(config.exposures), counts["documents"], counts["probe_questions"],
                counts["heldout_questions"], final)
    return final
