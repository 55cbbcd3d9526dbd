"""Diversity and repetition metrics over sampled responses.

RL post-training tends to collapse a policy onto a few phrasings; these numbers show
it. Every token-level function takes sequences of hashable tokens, so the same code
measures token ids (lists of ints from the tokenizer) or whitespace words (the output
of `words(text)`); which one a number was computed on is the caller's choice and
should be part of the metric's name. A plain string is refused where tokens are
expected, because iterating it would silently count characters.

Diversity is reported both within the samples of one prompt and across all samples
(`within_and_across`): a policy can answer each prompt the same way every time while
still answering different prompts differently.
"""

from __future__ import annotations

import math
import zlib
from collections import Counter
from collections.abc import Callable, Hashable, Sequence

import numpy as np

#: One response as a sequence of hashable tokens: token ids or words.
Tokens = Sequence[Hashable]


def words(text: str) -> list[str]:
    """Splits text into whitespace-separated words (str.split())."""
    return text.split()


def ngrams(tokens: Tokens, n: int) -> list[tuple[Hashable, ...]]:
    """The n-grams of one sequence, in order.

    Args:
        tokens: token ids or words; not a plain string.
        n: n-gram order, >= 1.

    Returns:
        max(0, len(tokens) - n + 1) tuples of n tokens.
    """
    if n < 1:
        raise ValueError(f"n-gram order n must be at least 1, got n={n}")
    if isinstance(tokens, (str, bytes)):
        raise TypeError("tokens is a string; pass words(text) for words or list(text) for characters")
    return [tuple(tokens[start : start + n]) for start in range(len(tokens) - n + 1)]


def _pooled_ngram_counts(sequences: Sequence[Tokens], n: int) -> Counter[tuple[Hashable, ...]]:
    counts: Counter[tuple[Hashable, ...]] = Counter()
    for tokens in sequences:
        counts.update(ngrams(tokens, n))
    return counts


def distinct_n(sequences: Sequence[Tokens], n: int) -> float:
    """Distinct-n: unique n-grams / total n-grams, pooled over all sequences.

    Works on token ids or words. Returns 0.0 when the sequences hold no n-gram.
    """
    counts = _pooled_ngram_counts(sequences, n)
    total = sum(counts.values())
    return len(counts) / total if total else 0.0


def ngram_entropy(sequences: Sequence[Tokens], n: int) -> float:
    """Shannon entropy, in nats, of the pooled n-gram frequency distribution.

    H = -sum_g p_g ln p_g with p_g = count(g) / total n-grams. Works on token ids or
    words. Returns 0.0 when the sequences hold no n-gram.
    """
    counts = _pooled_ngram_counts(sequences, n)
    total = sum(counts.values())
    if total == 0:
        return 0.0
    # 0.0 - ... rather than unary minus, so a single n-gram type gives 0.0, not -0.0.
    return 0.0 - sum(count / total * math.log(count / total) for count in counts.values())


def seq_rep_n(tokens: Tokens, n: int) -> float:
    """Seq-rep-n of one sequence: 1 - unique n-grams / total n-grams.

    0 means no n-gram repeats; values near 1 mean a loop. Works on token ids or words.
    Returns 0.0 for sequences shorter than n.
    """
    grams = ngrams(tokens, n)
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def mean_seq_rep_n(sequences: Sequence[Tokens], n: int) -> float:
    """Mean seq_rep_n over a non-empty list of sequences (token ids or words)."""
    if len(sequences) == 0:
        raise ValueError("sequences is empty; pass at least one sequence")
    return sum(seq_rep_n(tokens, n) for tokens in sequences) / len(sequences)


def sentence_bleu(hypothesis: Tokens, references: Sequence[Tokens], max_n: int = 4) -> float:
    """BLEU of one hypothesis against references, with add-one smoothing for n > 1.

    BLEU = BP * exp((1 / max_n) * sum_{n=1}^{max_n} ln p_n), where
      p_n  = clipped matches / hypothesis n-grams; a hypothesis n-gram's count is
             clipped to its largest count in any single reference;
      p_1  is not smoothed, so a hypothesis sharing no token with the references
             scores exactly 0; for n > 1, p_n = (clipped + 1) / (total + 1)
             (add-one smoothing, Lin and Och 2004), which keeps short or loosely
             matching hypotheses from scoring 0 and gives p_n = 1 to a hypothesis
             shorter than n;
      BP   = 1 if c > r else exp(1 - r / c), with c the hypothesis length and r the
             reference length closest to c (the shorter one on a tie).
    Works on token ids or words.

    Args:
        hypothesis: the scored sequence.
        references: one or more reference sequences.
        max_n: highest n-gram order, >= 1.

    Returns:
        BLEU in [0, 1]; 0.0 for an empty hypothesis.
    """
    if max_n < 1:
        raise ValueError(f"max_n must be at least 1, got max_n={max_n}")
    if len(references) == 0:
        raise ValueError("references is empty; BLEU needs at least one reference")
    if len(hypothesis) == 0:
        return 0.0
    reference_counts = [_max_counts(references, n) for n in range(1, max_n + 1)]
    return _bleu(
        hypothesis, max_n, lambda n, gram: reference_counts[n - 1][gram],
        _closest_length(len(hypothesis), Counter(len(reference) for reference in references)),
    )


def _max_counts(references: Sequence[Tokens], n: int) -> Counter[tuple[Hashable, ...]]:
    """Each n-gram's largest count in any single reference."""
    largest: Counter[tuple[Hashable, ...]] = Counter()
    for reference in references:
        largest |= Counter(ngrams(reference, n))
    return largest


def _closest_length(length: int, reference_lengths: Counter[int]) -> int:
    """The reference length closest to `length` (the shorter one on a tie)."""
    return min((other for other, count in reference_lengths.items() if count > 0),
               key=lambda other: (abs(other - length), other))


def _bleu(hypothesis: Tokens, max_n: int, reference_count: Callable[[int, tuple[Hashable, ...]], int],
          closest_reference_length: int) -> float:
    """`sentence_bleu` of a non-empty hypothesis, given each n-gram's largest reference count."""
    hypothesis_length = len(hypothesis)
    log_precision_sum = 0.0
    for n in range(1, max_n + 1):
        hypothesis_counts = Counter(ngrams(hypothesis, n))
        clipped = sum(min(count, reference_count(n, gram)) for gram, count in hypothesis_counts.items())
        total = sum(hypothesis_counts.values())
        if n == 1:
            if clipped == 0:
                return 0.0
            log_precision_sum += math.log(clipped / total)
        else:
            log_precision_sum += math.log((clipped + 1) / (total + 1))
    if hypothesis_length > closest_reference_length:
        brevity_penalty = 1.0
    else:
        brevity_penalty = math.exp(1.0 - closest_reference_length / hypothesis_length)
    return brevity_penalty * math.exp(log_precision_sum / max_n)


class _TopTwoCounts:
    """For every n-gram, its two largest counts in single sequences and whose the
    largest is: the largest count among all sequences but one, in constant time."""

    def __init__(self, sequences: Sequence[Tokens], n: int) -> None:
        self.best: dict[tuple[Hashable, ...], tuple[int, int]] = {}
        self.second: Counter[tuple[Hashable, ...]] = Counter()
        for index, tokens in enumerate(sequences):
            for gram, count in Counter(ngrams(tokens, n)).items():
                best = self.best.get(gram)
                if best is None or count > best[0]:
                    if best is not None:
                        self.second[gram] = best[0]
                    self.best[gram] = (count, index)
                elif count > self.second[gram]:
                    self.second[gram] = count

    def largest_without(self, gram: tuple[Hashable, ...], excluded: int) -> int:
        best = self.best.get(gram)
        if best is None:
            return 0
        return best[0] if best[1] != excluded else self.second[gram]


def self_bleu(
    sequences: Sequence[Tokens], max_n: int = 4, sample_size: int | None = None, seed: int = 0
) -> tuple[float, int]:
    """Self-BLEU: mean BLEU of each sequence against all the other sequences.

    Each scored sequence is the hypothesis and every other sequence (by position, so
    an identical copy elsewhere in the list still counts) is a reference; a sequence
    is never its own reference. Higher means less diverse. Scoring is quadratic in the
    number of sequences, so with sample_size < len(sequences) only that many
    hypotheses, drawn without replacement by numpy's default_rng(seed), are scored,
    each still against all the others. Works on token ids or words; BLEU is
    `sentence_bleu`.

    Args:
        sequences: the responses to compare.
        max_n: highest n-gram order of BLEU.
        sample_size: number of hypotheses to score; None scores all of them.
        seed: seed of the hypothesis sample.

    Returns:
        (score, number of hypotheses scored); (0.0, 0) for fewer than 2 sequences.
    """
    if sample_size is not None and sample_size < 1:
        raise ValueError(f"sample_size must be at least 1 or None, got {sample_size}")
    count = len(sequences)
    if count < 2:
        return 0.0, 0
    if sample_size is not None and sample_size < count:
        drawn = np.random.default_rng(seed).choice(count, size=sample_size, replace=False)
        hypothesis_indices = sorted(int(index) for index in drawn)
    else:
        hypothesis_indices = range(count)
    # every hypothesis against all the others: each n-gram's largest count in any other
    # sequence comes from a table built once, so the cost is linear in the sequences
    tables = [_TopTwoCounts(sequences, n) for n in range(1, max_n + 1)]
    lengths = Counter(len(tokens) for tokens in sequences)
    scores = []
    for index in hypothesis_indices:
        hypothesis = sequences[index]
        if len(hypothesis) == 0:
            scores.append(0.0)
            continue
        lengths[len(hypothesis)] -= 1  # never its own reference
        closest = _closest_length(len(hypothesis), lengths)
        lengths[len(hypothesis)] += 1
        scores.append(_bleu(hypothesis, max_n, lambda n, gram, index=index: tables[n - 1].largest_without(gram, index), closest))
    return sum(scores) / len(scores), len(scores)


def compression_ratio(texts: Sequence[str]) -> float:
    """Raw bytes / zlib-compressed bytes of the texts joined with newlines.

    Higher means more repetitive. Texts are UTF-8 encoded and compressed at level 9.
    Texts that join to no bytes at all give 0.0.
    """
    if isinstance(texts, str):
        raise TypeError("texts is a single string; pass a list of texts")
    if len(texts) == 0:
        raise ValueError("texts is empty; pass at least one text")
    joined = "\n".join(texts).encode("utf-8")
    return len(joined) / len(zlib.compress(joined, 9))


def within_and_across(
    groups: Sequence[Sequence[Tokens]], metric: Callable[[Sequence[Tokens]], float]
) -> dict[str, float]:
    """A set-level metric within each prompt's samples and across all samples.

    Args:
        groups: one non-empty group of samples per prompt.
        metric: maps a list of samples to a float, for example
            `lambda samples: distinct_n(samples, 2)` or
            `lambda samples: self_bleu(samples)[0]`.

    Returns:
        {"within": mean over groups of metric(group),
         "across": metric(all samples of all groups, in order)}.
    """
    if len(groups) == 0:
        raise ValueError("groups is empty; pass one group of samples per prompt")
    for index, group in enumerate(groups):
        if len(group) == 0:
            raise ValueError(f"groups[{index}] is empty; every prompt needs at least one sample")
    within = sum(metric(group) for group in groups) / len(groups)
    across = metric([sample for group in groups for sample in group])
    return {"within": float(within), "across": float(across)}
