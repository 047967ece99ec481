"""A deterministic generator of small arithmetic word problems with verified answers.

The default model of ttx (135M parameters) is hopeless on GSM8K; these one- and two-step problems
sit where it is neither hopeless nor perfect, so test-time scaling has something to show. Each
problem is built from a template and its answer is computed from the same numbers, then checked
to be a non-negative integer. Run: python -m ttx.data.arith --n 30 --seed 0 -o problems.jsonl
"""

from __future__ import annotations

import random

NAMES = ["Tom", "Mia", "Sam", "Lena", "Omar", "Ava", "Ben", "Zoe", "Raj", "Eva", "Leo", "Nina"]
ITEMS = ["apples", "pencils", "stickers", "marbles", "cookies", "books", "stamps", "shells"]


def _one_step(r: random.Random, name: str, item: str):
    a, b = r.randint(3, 40), r.randint(2, 30)
    kind = r.choice(["add", "sub", "mul", "div"])
    if kind == "add":
        return f"{name} has {a} {item}. {name} gets {b} more. How many {item} does {name} have now?", a + b
    if kind == "sub":
        a, b = max(a, b) + 5, min(a, b)
        return f"{name} has {a} {item} and gives away {b}. How many {item} are left?", a - b
    if kind == "mul":
        a, b = r.randint(2, 9), r.randint(2, 12)
        return f"{name} buys {a} bags with {b} {item} in each bag. How many {item} is that in all?", a * b
    b = r.randint(2, 9)
    a = b * r.randint(2, 12)
    return f"{name} shares {a} {item} equally among {b} friends. How many {item} does each friend get?", a // b


def _two_step(r: random.Random, name: str, item: str):
    kind = r.choice(["add_sub", "mul_add", "mul_sub", "price"])
    if kind == "add_sub":
        a, b = r.randint(10, 40), r.randint(2, 20)
        c = r.randint(1, a + b - 1)
        q = (f"{name} has {a} {item}. {name} buys {b} more and then gives {c} to a friend. "
             f"How many {item} does {name} have now?")
        return q, a + b - c
    if kind == "mul_add":
        a, b, c = r.randint(2, 6), r.randint(2, 10), r.randint(1, 15)
        q = (f"{name} has {a} boxes with {b} {item} in each box, and {c} loose {item}. "
             f"How many {item} does {name} have in total?")
        return q, a * b + c
    if kind == "mul_sub":
        a, b = r.randint(2, 6), r.randint(3, 10)
        c = r.randint(1, a * b - 1)
        q = (f"{name} buys {a} packs of {item} with {b} in each pack and uses {c} of them. "
             f"How many {item} are left?")
        return q, a * b - c
    price, count = r.randint(2, 9), r.randint(2, 8)
    paid = price * count + r.randint(1, 20)
    q = (f"{name} buys {count} {item} at {price} dollars each and pays with {paid} dollars. "
         f"How much change, in dollars, does {name} get?")
    return q, paid - price * count


def generate(n: int = 30, seed: int = 0, two_step_share: float = 0.5) -> list[dict]:
    """`n` problems `{id, question, answer}`; the same (n, seed) always gives the same list."""
    r = random.Random(seed)
    problems = []
    for i in range(n):
        name, item = r.choice(NAMES), r.choice(ITEMS)
        make = _two_step if r.random() < two_step_share else _one_step
        question, answer = make(r, name, item)
        if not (isinstance(answer, int) and answer >= 0):
            raise AssertionError(f"generator produced an invalid answer {answer!r} for {question!r}")
        problems.append({"id": f"arith-{seed}-{i}", "question": question, "answer": str(answer)})
    return problems


def main(argv=None) -> None:
    import argparse

    from ttx.io import write_jsonl

    parser = argparse.ArgumentParser(description="Generate arithmetic word problems as JSONL.")
    parser.add_argument("--n", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--two-step-share", type=float, default=0.5)
    parser.add_argument("-o", "--output", default="-")
    args = parser.parse_args(argv)
    write_jsonl(args.output, generate(args.n, args.seed, args.two_step_share))


if __name__ == "__main__":
    main()
