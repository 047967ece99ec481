"""Tree of Thoughts' state evaluator for math word problems: the model's own value prompts.

The rule is princeton-nlp/tree-of-thought-llm@ab40034 src/tot/tasks/game24.py:75-92 ("G24"): an
unfinished state is judged sure/likely/impossible (prompts/game24.py:66-105, `value_prompt`), a
finished one sure/impossible (prompts/game24.py:107-134, `value_last_step_prompt`); each of the
n_evaluate_sample answers is read from its last line and the value is the sum of the value map
over them (G24:89-91: impossible 0.001, likely 1, sure 20; any other last line adds 0). A
finished state without an answer is worth 0 (G24:87-88: a last-depth trajectory with no
"answer" line). The prompt texts below are ttx's, written for GSM8K in the style of
`value_last_step_prompt` (few-shot, "Judge:" then the word on its own line; the prompt ends at
that line, so a judge held to the words writes the word alone); the examples are ttx's own.
"""

from __future__ import annotations

from ttx.scoring.answers import extract_answer

VALUE_MAP = {"impossible": 0.001, "likely": 1, "sure": 20}     # G24:90
PARTIAL_WORDS = ("sure", "likely", "impossible")
FINAL_WORDS = ("sure", "impossible")

PARTIAL_PROMPT = ("Evaluate if the steps so far can lead to the correct answer of the question "
                  "(sure/likely/impossible)\n") + """\
Question: Tom has 3 boxes with 4 apples each. He eats 2 apples. How many apples are left?
Steps: 3 boxes with 4 apples each hold 3 * 4 = 12 apples.
Judge:
sure
Question: A pen costs $2 and a book costs $5. How much do 3 pens and 2 books cost?
Steps: 3 pens cost 3 * 2 = $6.
Judge:
sure
Question: Sara reads 10 pages a day. How many pages does she read in a week?
Steps: A week has 5 days.
Judge:
impossible
Question: A farm has 12 cows and twice as many sheep. How many animals are there?
Steps: The farm has 12 cows.
Judge:
likely
Question: Jim had $50 and spent $18 on lunch. How much money does he have now?
Steps: Jim spent 50 + 18 = $68.
Judge:
impossible
Question: {question}
Steps: {steps}
Judge:
"""

FINAL_PROMPT = ("Given a question and a solution, give a judgement (sure/impossible) if the "
                "solution's answer is correct.\n") + """\
Question: Tom has 3 boxes with 4 apples each. He eats 2 apples. How many apples are left?
Solution: The boxes hold 3 * 4 = 12 apples. 12 - 2 = 10 are left. The answer is 10.
Judge:
sure
Question: Jim had $50 and spent $18 on lunch. How much money does he have now?
Solution: Jim has 50 - 18 = $32 left. The answer is 32.
Judge:
sure
Question: Sara reads 10 pages a day. How many pages does she read in a week?
Solution: A week has 5 days, so she reads 10 * 5 = 50 pages. The answer is 50.
Judge:
impossible
Question: A pen costs $2 and a book costs $5. How much do 3 pens and 2 books cost?
Solution: 3 pens cost $6 and 2 books cost $10, so 6 + 10 = $17. The answer is 17.
Judge:
impossible
Question: {question}
Solution: {steps}
Judge:
"""


def value_prompt(question: str, steps: str, final: bool) -> str:
    """The value prompt of one state (G24:75-83's choice of prompt: finished or not)."""
    return (FINAL_PROMPT if final else PARTIAL_PROMPT).format(question=question.strip(),
                                                             steps=steps.strip())


def words(final: bool) -> tuple[str, ...]:
    """The judgements a value answer may be (the engine's choice constraint)."""
    return FINAL_WORDS if final else PARTIAL_WORDS


def value_of(outputs: list[str], final: bool, text: str) -> float:
    """G24:86-92: the sum of the value map over the answers' last lines (exact words; an
    unparseable answer adds nothing); a finished state with no answer is 0."""
    if final and extract_answer(text) is None:
        return 0
    names = [o.split("\n")[-1] for o in outputs]
    return sum(value * names.count(name) for name, value in VALUE_MAP.items())
