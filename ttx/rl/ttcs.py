"""TTCS's rules (Test-Time Curriculum Synthesis, XMUDeepLIT/TTCS at c0a38fd; built on R-Zero): the
synthesizer's prompt and parse rule, the solver's majority share p, the uncertainty reward, the
BLEU-cluster repetition penalty and the consistency band. Pure functions; the co-evolution loop
that uses them is ttx/rl/curricula/ttcs.py.

Reference lines: src/reward_manager.py (parse 177-192, BLEU distance 50-65, clustering 67-90, final
reward 206), src/utils.py (majority share 355-364 / 260-269, uncertainty 271), src/script/solver.sh
(band filter_lower=0.25, filter_high=0.75 at 104-105; kept when 0.25 <= acc <= 0.75,
reward_manager.py:494), src/data_merge.py (deduplication 49-59, as many synthetic as real 61)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from ttx.scoring.answers import vote_key, winner

PROMPT_FILE = Path(__file__).with_name("ttcs_prompt.txt")    # the reference's src/prompt_template.txt
BAND = (0.25, 0.75)                                           # solver.sh:104-105
BLEU_THRESHOLD = 0.5                                          # reward_manager.py:196
_QUESTION = re.compile(r"<question>(.*?)</question>", re.DOTALL)


def synth_prompt(reference_question: str) -> str:
    """The synthesizer's user message for one test question (Challenger_dataset.py:168)."""
    return PROMPT_FILE.read_text(encoding="utf-8").format(reference_question=reference_question)


def last_boxed(text: str) -> str | None:
    """The content of the last \\boxed{...}, braces balanced; None without one or unclosed."""
    start = text.rfind("\\boxed{")
    if start == -1:
        return None
    depth, body = 0, text[start + len("\\boxed{"):]
    for i, ch in enumerate(body):
        depth += (ch == "{") - (ch == "}")
        if depth == -1:
            return body[:i].strip()
    return None


def parse_variant(text: str) -> tuple[str, str]:
    """(question, answer) of a synthesizer response, ("", "") when it does not parse: the last
    <question>...</question> block and the last \\boxed{} must both be present and non-empty
    (reward_manager.py:177-192)."""
    questions = _QUESTION.findall(text)
    answer = last_boxed(text)
    if questions and answer:
        return questions[-1].strip(), answer.strip()
    return "", ""


def majority_share(answers: Sequence[str | None]) -> float:
    """p: the share of the solver's responses in the most frequent answer class, responses without
    an answer forming one class; 0 when that class wins (utils.py:355-364)."""
    if not answers:
        return 0.0
    keys = [vote_key(a, "lm-eval") for a in answers]
    w = winner(keys)
    if w is None or answers[w] is None:
        return 0.0
    return sum(k == keys[w] for k in keys) / len(answers)


def uncertainty(p: float) -> float:
    """1 - 2|p - 1/2|: 1 when the solver splits evenly, 0 when it agrees or fails (utils.py:271)."""
    return 1.0 - 2.0 * abs(p - 0.5)


def bleu_distances(sentences: Sequence[str]) -> list[list[float]]:
    """1 - sentence BLEU (nltk, whitespace tokens, smoothing method1) between every two; the
    hypothesis is the row's sentence, the reference the column's, mirrored to the lower triangle
    as the reference does (reward_manager.py:50-65)."""
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    n = len(sentences)
    smooth = SmoothingFunction().method1
    dist = [[0.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            score = float(sentence_bleu([sentences[j].split()], sentences[i].split(),
                                        smoothing_function=smooth))
            dist[i][j] = dist[j][i] = 1.0 - score
    return dist


def average_linkage(dist: Sequence[Sequence[float]], threshold: float) -> list[int]:
    """Agglomerative clustering with average linkage on a precomputed distance matrix: merge the
    two closest clusters while their mean pairwise distance is below `threshold` (scikit-learn's
    AgglomerativeClustering(n_clusters=None, distance_threshold, linkage="average"), the
    reference's reward_manager.py:77-83). Returns a cluster label per item (first-seen numbering)."""
    n = len(dist)
    clusters: list[list[int]] = [[i] for i in range(n)]
    while len(clusters) > 1:
        best, pair = None, None
        for a in range(len(clusters)):
            for b in range(a + 1, len(clusters)):
                pairs = [dist[i][j] for i in clusters[a] for j in clusters[b]]
                d = sum(pairs) / len(pairs)
                if best is None or d < best:
                    best, pair = d, (a, b)
        if best >= threshold:
            break
        a, b = pair
        clusters[a] = sorted(clusters[a] + clusters[b])
        del clusters[b]
    labels = [0] * n
    for lab, members in enumerate(sorted(clusters)):
        for i in members:
            labels[i] = lab
    return labels


def repetition_penalty(questions: Sequence[str], threshold: float = BLEU_THRESHOLD) -> list[float]:
    """Each question's cluster's share of the batch (reward_manager.py:67-90): questions that
    repeat one another share a large cluster and are penalised by its size."""
    if not questions:
        return []
    labels = average_linkage(bleu_distances(questions), threshold) if len(questions) > 1 else [0]
    sizes: dict[int, int] = {}
    for lab in labels:
        sizes[lab] = sizes.get(lab, 0) + 1
    return [sizes[lab] / len(questions) for lab in labels]


def synth_rewards(questions: Sequence[str], shares: Sequence[float | None],
                  threshold: float = BLEU_THRESHOLD) -> tuple[list[float], list[float]]:
    """(reward, penalty) per synthesizer response: max(0, uncertainty(p) - penalty) for a parsed
    question, 0 for one that did not parse ("" question, p None); the penalty clusters every
    response of the batch, unparsed ones included (reward_manager.py:196, 206)."""
    penalty = repetition_penalty(questions, threshold)
    rewards = [max(0.0, uncertainty(p) - pen) if q and p is not None else 0.0
               for q, p, pen in zip(questions, shares, penalty)]
    return rewards, penalty


def in_band(p: float, band: tuple[float, float] = BAND) -> bool:
    """A synthetic question is kept for the solver when band[0] <= p <= band[1] (reward_manager.py:494)."""
    return band[0] <= p <= band[1]


def quantiles(values: Sequence[float], qs: Sequence[float] = (0.1, 0.25, 0.5, 0.75, 0.9)) -> dict[str, float]:
    """Linear-interpolation quantiles (numpy's default) of the solver's shares, for the train log."""
    if not values:
        return {}
    v = sorted(values)
    out = {}
    for q in qs:
        pos = q * (len(v) - 1)
        lo = int(pos)
        hi = min(lo + 1, len(v) - 1)
        out[f"q{round(q * 100):02d}"] = v[lo] + (v[hi] - v[lo]) * (pos - lo)
    return out
