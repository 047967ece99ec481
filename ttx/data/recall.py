"""A deterministic generator of synthetic long-context recall records (needle-in-a-haystack style).

Each record hides a few facts ("Mia's locker number is 47.") among distractor sentences that
carry no numbers; the question asks for one fact and the answer is its number, so `ttx score`
grades answers exactly. The context length (in words) is a parameter, which makes the same task
short enough for a prompt or far longer than a small model reads well. This is the kind of task
PERK is meta-trained and evaluated on (BabiLong QA1, needle-in-a-haystack; Chen et al. 2025 §4),
shipped so that no download is needed.

Run: python -m ttx.data.recall --n 100 --context-words 200 --seed 0 -o train.jsonl
"""

from __future__ import annotations

import random

NAMES = ["Mia", "Tom", "Lena", "Omar", "Ava", "Ben", "Zoe", "Raj", "Eva", "Leo", "Nina", "Sam",
         "Ines", "Hugo", "Yara", "Finn", "Lola", "Ivan", "Maya", "Otto", "Rosa", "Karl", "Nora",
         "Ezra", "Alma", "Theo", "Ruth", "Jonas", "Clara", "Amir"]
# attribute -> question wording; each fact of a record uses a different attribute and person
ATTRIBUTES = ["locker number", "room number", "bus number", "lucky number", "door code",
              "team number", "seat number", "shirt number"]
# distractor sentences: no digits, no names, so they never look like an answer
_SUBJECTS = ["The old bridge", "A quiet river", "The village market", "The morning train",
             "A small garden", "The city library", "The harbour", "A narrow street", "The bakery",
             "The mountain path", "The school yard", "A wooden boat", "The museum", "The forest",
             "The night sky", "A cold wind", "The town square", "The farm", "The old mill"]
_VERBS = ["was busy", "looked calm", "stayed open", "seemed empty", "felt warm", "grew louder",
          "was covered in snow", "smelled of bread", "was full of birds", "looked grey",
          "shone in the sun", "was painted blue", "stood still", "filled with people",
          "was closed for repairs", "glowed at dusk"]
_TAILS = ["all afternoon", "after the rain", "that autumn", "during the festival", "before noon",
          "for most of the week", "on weekdays", "late in the evening", "as usual", "again",
          "in early spring", "when the bells rang", "for a while", "near the end of summer"]


def _distractor(r: random.Random) -> str:
    return f"{r.choice(_SUBJECTS)} {r.choice(_VERBS)} {r.choice(_TAILS)}."


def make_record(r: random.Random, rid: str, context_words: int, facts: int) -> dict:
    """One record `{id, context, question, answer, facts}`: `facts` facts among distractors."""
    people = r.sample(NAMES, facts)
    attributes = r.sample(ATTRIBUTES, facts)
    numbers = r.sample(range(10, 100), facts)          # two digits, distinct within a record
    fact_sentences = [f"{p}'s {a} is {n}." for p, a, n in zip(people, attributes, numbers)]
    fact_words = sum(len(s.split()) for s in fact_sentences)
    filler: list[str] = []
    words = fact_words
    while words < context_words:
        s = _distractor(r)
        filler.append(s)
        words += len(s.split())
    # facts at random places among the distractors (sorted so their order is random too)
    slots = sorted(r.sample(range(len(filler) + facts), facts))
    order = list(range(facts))
    r.shuffle(order)
    sentences, f_iter = [], iter(filler)
    for i in range(len(filler) + facts):
        sentences.append(fact_sentences[order[slots.index(i)]] if i in slots else next(f_iter))
    ask = r.randrange(facts)
    return {"id": rid, "context": " ".join(sentences),
            "question": f"What is {people[ask]}'s {attributes[ask]}?",
            "answer": str(numbers[ask]), "facts": facts}


def generate(n: int = 100, context_words: int = 200, seed: int = 0, facts: int = 3) -> list[dict]:
    """`n` records; the same arguments always give the same list."""
    if not 1 <= facts <= len(ATTRIBUTES):
        raise ValueError(f"facts must be between 1 and {len(ATTRIBUTES)}, got {facts}")
    if context_words < 1:
        raise ValueError(f"context_words must be positive, got {context_words}")
    r = random.Random(f"recall-{seed}-{context_words}-{facts}")
    return [make_record(r, f"recall-{seed}-{context_words}-{i}", context_words, facts)
            for i in range(n)]


def main(argv=None) -> None:
    import argparse

    from ttx.io import write_jsonl

    parser = argparse.ArgumentParser(description="Generate synthetic long-context recall records "
                                                 "as JSONL {id, context, question, answer}.")
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--context-words", type=int, default=200,
                        help="approximate context length in words (about 1.3 tokens each)")
    parser.add_argument("--facts", type=int, default=3, help="facts hidden per context")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", "--output", default="-")
    args = parser.parse_args(argv)
    try:
        records = generate(args.n, args.context_words, args.seed, args.facts)
    except ValueError as exc:
        parser.error(str(exc))
    write_jsonl(args.output, records)


if __name__ == "__main__":
    main()
