"""How a reward model sees a solution: the input conventions of outcome and process reward models.

Shared by tts-run's scorers (ttx.tts.reward) and verifier-train, so a verifier is trained on
exactly the text it is later asked to score.

- ORM (a *ForSequenceClassification head): the question and the whole response as a chat
  (user, assistant) when the tokenizer has a chat template, else "question\\n\\nresponse".
- PRM, `tag` format (Math-Shepherd, peiyi9979/math-shepherd-mistral-7b-prm's model card):
  `question + " " + step_1 + " ки\\n" + step_2 + " ки"`: every step followed by " " and the step
  tag, steps one per line; the score of step k is read at its tag, P(good) against P(bad) there.
- PRM, `chat` format (RLHFlow/Llama3.1-8B-PRM-*, RLHF-Reward-Modeling math-rm/prm_evaluate.py):
  user turns `question + " " + step_1`, `step_2`, ... each answered by an assistant turn holding
  the good token; the score of step k is read where its good token is predicted.
- PRM, `qwen` format (Qwen2.5-Math-PRM; a token-classification head): system, user question and
  an assistant turn whose steps are joined by `<extra_0>` with one more at the end; the score of
  step k is P(label 1) at its `<extra_0>`.
- PRM, `skywork` format (Skywork-o1-Open-PRM; a value head, SkyworkAI/skywork-o1-prm-inference
  model_utils/io_utils.py:4-23 prepare_input): `bos_token + question + "\n"` encoded, then each
  line of the response encoded alone and followed by the step token ("\n"); the steps are
  joined by it, one per line. The score of step k is the sigmoid of the value at the step token
  closing its last line (io_utils.py:43-53; every line is a step to the model, ttx reads the one
  that ends each of its steps).
These are the `model-card` construction (--prm-input): a solution is split into steps at blank
lines (search-and-learn's "\\n\\n"), each stripped, empty steps dropped.

The `search-and-learn` construction (--prm-input; huggingface/search-and-learn@6f81cac
src/sal/models/reward_models.py, "RM"): the solution is split at every blank line as it is, empty
pieces kept (RM:229), so an open beam (its text ends at a blank line) has an empty last step;
`chat` turns are those pieces (RM:230-236), `qwen` joins them with `<extra_0>` (RM:363), and
Math-Shepherd's input is `system + "\\n" + question + "\\n" + " " + solution` with " ки" before
every blank line and one more at the end unless the solution ends with a blank line
(RM:110-115); every tag in the input is scored (RM:55).
"""

from __future__ import annotations

from ttx.errors import TtxError

STEP_SEPARATOR = "\n\n"
SAL_INPUT, CARD_INPUT = "search-and-learn", "model-card"
MATH_SHEPHERD_TAG = "ки"
QWEN_STEP_TAG = "<extra_0>"
SKYWORK_STEP_TAG = "\n"     # the README's prepare_input(..., step_token="\n")
# Architectures whose checkpoints ship remote code and which ttx loads with its own classes
# (ttx.prm_models): the format that reads each.
NATIVE_PRMS = {"Qwen2ForProcessRewardModel": "qwen", "Qwen2ForPrmModel": "skywork"}
QWEN_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
# Written beside a reward model's weights (by verifier-train, or by hand): how to read it.
READING_FILE = "ttx_reward.json"


def split_steps(text: str) -> list[str]:
    """A solution's steps: the text split at blank lines, empty steps dropped."""
    return [s.strip() for s in text.split(STEP_SEPARATOR) if s.strip()]


def steps_of(text: str, construction: str) -> list[str]:
    """A path's steps as a PRM input construction sees them: search-and-learn's raw pieces
    (RM:184, 229: text.split("\\n\\n")) or the model card's (split_steps)."""
    return text.split(STEP_SEPARATOR) if construction == SAL_INPUT else split_steps(text)


def sal_tag_text(system: str, question: str, pieces: list[str],
                 tag: str = MATH_SHEPHERD_TAG) -> str:
    """search-and-learn's Math-Shepherd input (RM:110-115) from the raw pieces of steps_of."""
    body = STEP_SEPARATOR.join(pieces).replace(STEP_SEPARATOR, f" {tag}{STEP_SEPARATOR}")
    if body[-2:] != STEP_SEPARATOR:
        body += f" {tag}"
    return f"{system}\n{question}\n {body}"


def orm_text(tokenizer, question: str, response: str) -> str:
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": question}, {"role": "assistant", "content": response}],
            tokenize=False)
    return f"{question}\n\n{response}"


def tag_text(question: str, steps: list[str], tag: str = MATH_SHEPHERD_TAG) -> str:
    """Math-Shepherd's input: the question, then each step followed by " " + tag, one per line."""
    return question + " " + "\n".join(f"{step} {tag}" for step in steps)


def tag_positions(ids: list[int], tag_id: int) -> list[int]:
    """Where the tag token sits: the logits there predict the good/bad token of that step."""
    return [i for i, t in enumerate(ids) if t == tag_id]


def chat_turns(question: str, steps: list[str], good: str) -> list[dict]:
    turns = []
    for k, step in enumerate(steps):
        turns.append({"role": "user", "content": f"{question} {step}" if k == 0 else step})
        turns.append({"role": "assistant", "content": good})
    return turns


def qwen_text(tokenizer, question: str, steps: list[str]) -> str:
    messages = [{"role": "system", "content": QWEN_SYSTEM},
                {"role": "user", "content": question},
                {"role": "assistant", "content": QWEN_STEP_TAG.join(steps) + QWEN_STEP_TAG}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)


def skywork_ids(tokenizer, question: str, steps: list[str],
                tag: str = SKYWORK_STEP_TAG) -> tuple[list[int], list[int]]:
    """Skywork's input ids (io_utils.py:4-23 on the response tag.join(steps)) and, per step, the
    position of the step token closing its last line."""
    if tokenizer.bos_token is None:
        raise TtxError("the Skywork PRM input opens with the tokenizer's bos_token, which this "
                       "tokenizer does not set", field="bos_token")
    ids = tokenizer.encode(tokenizer.bos_token + question + "\n")
    tag_id = tokenizer.encode(tag)[-1]
    positions = []
    for step in steps:
        for line in step.split(tag):
            ids += (tokenizer.encode(line) if line else []) + [tag_id]
        positions.append(len(ids) - 1)
    return ids, positions
