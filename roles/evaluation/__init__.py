"""Pure evaluation metrics: accuracy over several samples per problem, and diversity.

Everything here is a function of plain Python values (numpy only for the bootstrap and
sampling) with no I/O and no processes, so it tests on a CPU in milliseconds. An
evaluation role extracts answers, scores and tokens from its responses and calls these.
"""

from roles.evaluation.accuracy import (
    BootstrapInterval,
    bootstrap_ci,
    maj_at_k,
    majority_vote,
    mean_at_k,
    mean_pass_at_k,
    pass_at_k,
)
from roles.evaluation.diversity import (
    Tokens,
    compression_ratio,
    distinct_n,
    mean_seq_rep_n,
    ngram_entropy,
    ngrams,
    self_bleu,
    sentence_bleu,
    seq_rep_n,
    within_and_across,
    words,
)

__all__ = [
    "BootstrapInterval",
    "Tokens",
    "bootstrap_ci",
    "compression_ratio",
    "distinct_n",
    "maj_at_k",
    "majority_vote",
    "mean_at_k",
    "mean_pass_at_k",
    "mean_seq_rep_n",
    "ngram_entropy",
    "ngrams",
    "pass_at_k",
    "self_bleu",
    "sentence_bleu",
    "seq_rep_n",
    "within_and_across",
    "words",
]
