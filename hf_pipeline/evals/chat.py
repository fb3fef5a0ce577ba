"""Chat checks: does the assistant end its turn (stop rate), and does it know who it is (identity accuracy)?

    stop_rate           share of greedy replies to prompts that end with <|im_end|> within max_new_tokens;
                        reply_tokens: their mean length (a model that stops at once is no success either);
                        identity_leak: share of replies to ordinary prompts that name the assistant or its author
    identity_accuracy   share of IDENTITY_QUESTIONS (paraphrases in none of the identity data) answered with the
                        assistant's name ("who are you" questions) or its author ("who made you" questions)
"""

from __future__ import annotations

from collections.abc import Sequence

from ..engine import Engine, SamplingParams

# Held-out identity questions: paraphrases that are in none of the identity data (checked by the tests). A
# "name" question is answered right when the reply holds the assistant's name, an "author" one with the author's.
IDENTITY_QUESTIONS = [
    ("What should I call you?", "name"), ("Please introduce yourself.", "name"), ("Who am I talking to?", "name"),
    ("What's your name?", "name"), ("Tell me your name.", "name"), ("Could you tell me who you are?", "name"),
    ("Introduce yourself, please.", "name"), ("Who are you, exactly?", "name"), ("May I know your name?", "name"),
    ("What do people call you?", "name"), ("Hey there, who is this?", "name"), ("Are you a person or a bot?", "name"),
    ("Tell me who created you.", "author"), ("Who made you?", "author"), ("Who developed you?", "author"),
    ("Which team built you?", "author"), ("Who is your creator?", "author"), ("Who trained you?", "author"),
    ("Who are your developers?", "author"), ("Where do you come from? Who made you?", "author"),
]


def reply_prompts(engine: Engine, conversations: Sequence[list[dict]], max_new_tokens: int, max_length: int | None,
                  limit: int) -> list[list[dict]]:
    """The first ``limit`` prompts (a conversation up to its first assistant turn) that leave room for a reply of
    ``max_new_tokens`` within ``max_length`` tokens (longer ones are skipped)."""
    prompts = []
    for conv in conversations:
        first_reply = next((i for i, m in enumerate(conv) if m["role"] == "assistant"), len(conv))
        prompt = conv[:first_reply]
        if max_length is None or engine.count_tokens(engine.render(prompt)) + max_new_tokens <= max_length:
            prompts.append(prompt)
        if len(prompts) == limit:
            break
    return prompts


def stop_rate(engine: Engine, prompts: Sequence[list[dict]], max_new_tokens: int = 128,
              marks: Sequence[str] = ()) -> tuple[dict, list[dict]]:
    """Greedy replies to ``prompts``: stop rate, mean reply length, and the identity leak (replies that name any
    of ``marks``, e.g. the assistant's name and author). Returns ``(metrics, samples)``; empty without prompts."""
    if not prompts:
        return {}, []
    out = engine.reply(list(prompts), SamplingParams(max_new_tokens=max_new_tokens))
    samples = [{"prompt": p[-1]["content"], **{k: v for k, v in o.items() if k != "tool_calls"}}
               for p, o in zip(prompts, out)]
    marks = [m.lower() for m in marks if m]
    leaks = [any(m in o["reply"].lower() for m in marks) for o in out]
    return {"stop_rate": sum(o["stopped"] for o in out) / len(out),
            "reply_tokens": sum(o["tokens"] for o in out) / len(out),
            "identity_leak": sum(leaks) / len(out)}, samples


def identity_accuracy(engine: Engine, name: str, author: str, system: str | None = None,
                      max_new_tokens: int = 48) -> tuple[float, list[dict]]:
    """Share of IDENTITY_QUESTIONS whose greedy reply names the assistant (or its author), and the replies."""
    prefix = [{"role": "system", "content": system}] if system else []
    conversations = [prefix + [{"role": "user", "content": q}] for q, _ in IDENTITY_QUESTIONS]
    replies = engine.reply(conversations, SamplingParams(max_new_tokens=max_new_tokens))
    samples = []
    for (question, kind), out in zip(IDENTITY_QUESTIONS, replies):
        wanted = name if kind == "name" else author
        samples.append({"question": question, "reply": out["reply"], "correct": wanted.lower() in out["reply"].lower()})
    return sum(s["correct"] for s in samples) / len(samples), samples
