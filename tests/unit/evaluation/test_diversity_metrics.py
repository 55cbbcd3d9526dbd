"""Distinct-n, n-gram entropy, seq-rep-n, self-BLEU and compression ratio on hand-worked examples."""

import math
import random
import zlib

import pytest

from roles.evaluation import (
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

# Two sequences: "a b a b" and "a c".
#   unigrams: a b a b a c     -> total 6, unique {a, b, c} = 3
#   bigrams:  ab ba ab | ac   -> total 4, unique {ab, ba, ac} = 3
SEQUENCES = [words("a b a b"), words("a c")]


def test_words_splits_on_whitespace():
    assert words("  the cat\tsat\n") == ["the", "cat", "sat"]


def test_ngrams_of_one_sequence_in_order():
    assert ngrams([1, 2, 3], 2) == [(1, 2), (2, 3)]
    assert ngrams([1, 2], 3) == []


def test_ngrams_refuses_a_plain_string_and_a_zero_order():
    with pytest.raises(TypeError, match="words"):
        ngrams("a b", 1)
    with pytest.raises(ValueError, match="n="):
        ngrams([1], 0)


def test_distinct_n_pools_ngrams_over_sequences():
    assert distinct_n(SEQUENCES, 1) == pytest.approx(3 / 6)
    assert distinct_n(SEQUENCES, 2) == pytest.approx(3 / 4)


def test_distinct_n_works_on_token_ids():
    assert distinct_n([[1, 2, 1, 2], [1, 3]], 1) == pytest.approx(3 / 6)


def test_distinct_n_is_zero_without_ngrams():
    assert distinct_n([[1], []], 2) == 0.0
    assert distinct_n([], 1) == 0.0


def test_ngram_entropy_hand_worked():
    # unigrams a:3 b:2 c:1 of 6;  bigrams ab:2 ba:1 ac:1 of 4
    expected_unigram = -(0.5 * math.log(0.5) + (1 / 3) * math.log(1 / 3) + (1 / 6) * math.log(1 / 6))
    expected_bigram = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))

    assert ngram_entropy(SEQUENCES, 1) == pytest.approx(expected_unigram)
    assert ngram_entropy(SEQUENCES, 2) == pytest.approx(expected_bigram)


def test_ngram_entropy_of_uniform_and_single_ngram_distributions():
    assert ngram_entropy([[1, 2, 3, 4]], 1) == pytest.approx(math.log(4))
    assert ngram_entropy([[7, 7, 7]], 1) == 0.0
    assert ngram_entropy([[7]], 2) == 0.0


def test_seq_rep_n_hand_worked():
    # bigrams ab ba ab: 2 unique of 3
    assert seq_rep_n(words("a b a b"), 2) == pytest.approx(1 / 3)
    assert seq_rep_n(words("a b c d"), 2) == 0.0
    assert seq_rep_n([5, 5, 5, 5, 5], 1) == pytest.approx(1 - 1 / 5)


def test_seq_rep_n_is_zero_for_a_sequence_shorter_than_n():
    assert seq_rep_n([1, 2], 4) == 0.0


def test_mean_seq_rep_n_averages_per_sequence_values():
    assert mean_seq_rep_n(SEQUENCES, 2) == pytest.approx((1 / 3 + 0.0) / 2)
    with pytest.raises(ValueError, match="empty"):
        mean_seq_rep_n([], 2)


def test_sentence_bleu_clips_counts_to_the_reference():
    # "the" occurs 4 times in the hypothesis but at most once in the reference -> p1 = 1/4
    assert sentence_bleu(words("the the the the"), [words("the cat")], max_n=1) == pytest.approx(0.25)


def test_sentence_bleu_brevity_penalty_uses_the_closest_reference_length():
    # hypothesis length 3; references of length 2 and 5 -> r = 2, no penalty
    assert sentence_bleu([1, 2, 3], [[1, 2], [1, 2, 3, 4, 5]], max_n=1) == pytest.approx(1.0)
    # hypothesis length 3; only reference of length 5 -> BP = exp(1 - 5/3)
    assert sentence_bleu([1, 2, 3], [[1, 2, 3, 4, 5]], max_n=1) == pytest.approx(math.exp(1 - 5 / 3))


def test_sentence_bleu_add_one_smoothing_of_higher_orders():
    # hypothesis 1 2 3 vs reference 1 3 2: p1 = 3/3, bigrams 12 23 match nothing -> p2 = (0+1)/(2+1)
    assert sentence_bleu([1, 2, 3], [[1, 3, 2]], max_n=2) == pytest.approx(math.sqrt(1 / 3))


def test_self_bleu_of_identical_sequences_is_one():
    score, scored = self_bleu([words("the cat sat on the mat")] * 3)

    assert score == pytest.approx(1.0)
    assert scored == 3


def test_self_bleu_of_disjoint_vocabularies_is_zero():
    score, _ = self_bleu([[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]])

    assert score == pytest.approx(0.0, abs=1e-12)


def test_self_bleu_never_uses_a_sequence_as_its_own_reference():
    # A = a b c d, B = a b c, max_n = 2.
    # BLEU(A | B): p1 = 3/4, bigrams ab bc cd -> 2 matched of 3 -> p2 = 3/4, c=4 > r=3 -> 0.75
    # BLEU(B | A): p1 = 1, bigrams ab bc both match -> p2 = 3/3, BP = exp(1 - 4/3)
    # Were a sequence its own reference, both would be 1.0.
    a, b = words("a b c d"), words("a b c")
    expected = (0.75 + math.exp(1 - 4 / 3)) / 2

    score, scored = self_bleu([a, b], max_n=2)

    assert score == pytest.approx(expected)
    assert scored == 2


def test_self_bleu_counts_an_identical_copy_at_another_position_as_a_reference():
    # Each copy of A finds the other copy; B finds A. Only B differs from 1.0.
    a, b = words("a b c d"), words("x y z w")
    score, _ = self_bleu([a, a, b], max_n=2)

    assert score == pytest.approx(2 / 3)


def test_self_bleu_scores_only_the_sample_and_is_deterministic_for_a_seed():
    generator = random.Random(1)
    sequences = [[generator.randrange(20) for _ in range(12)] for _ in range(10)]

    first = self_bleu(sequences, sample_size=4, seed=7)

    assert first[1] == 4
    assert self_bleu(sequences, sample_size=4, seed=7) == first
    assert self_bleu(sequences, sample_size=50)[1] == 10


def test_self_bleu_needs_two_sequences():
    assert self_bleu([]) == (0.0, 0)
    assert self_bleu([[1, 2, 3]]) == (0.0, 0)


def test_compression_ratio_is_higher_for_repetitive_text():
    generator = random.Random(0)
    letters = "abcdefghijklmnopqrstuvwxyz "
    random_texts = ["".join(generator.choice(letters) for _ in range(200)) for _ in range(5)]
    repetitive_texts = ["the answer is 42. " * 11 for _ in range(5)]

    assert compression_ratio(repetitive_texts) > 5.0
    assert compression_ratio(repetitive_texts) > compression_ratio(random_texts)


def test_compression_ratio_is_bytes_over_compressed_bytes_of_newline_joined_texts():
    joined = b"ab\ncd"
    assert compression_ratio(["ab", "cd"]) == pytest.approx(len(joined) / len(zlib.compress(joined, 9)))


def test_compression_ratio_rejects_no_texts_and_a_bare_string():
    with pytest.raises(ValueError, match="empty"):
        compression_ratio([])
    with pytest.raises(TypeError, match="list"):
        compression_ratio("abc")


def test_within_and_across_separates_per_prompt_and_global_diversity():
    # prompt 1: "x y" twice -> x y x y: 2 unique of 4;  prompt 2: "x z" twice -> 0.5
    # across: x y x y x z x z -> {x, y, z} = 3 of 8
    groups = [[words("x y"), words("x y")], [words("x z"), words("x z")]]

    result = within_and_across(groups, lambda samples: distinct_n(samples, 1))

    assert result == {"within": pytest.approx(0.5), "across": pytest.approx(3 / 8)}


def test_within_and_across_with_self_bleu():
    # each prompt repeats one answer (self-BLEU 1.0); across prompts every sample still finds its copy
    groups = [[[1, 2, 3]] * 2, [[4, 5, 6]] * 2]

    result = within_and_across(groups, lambda samples: self_bleu(samples, max_n=2)[0])

    assert result == {"within": pytest.approx(1.0), "across": pytest.approx(1.0)}


def test_within_and_across_rejects_empty_groups():
    with pytest.raises(ValueError, match="empty"):
        within_and_across([], lambda samples: 0.0)
    with pytest.raises(ValueError, match=r"groups\[1\]"):
        within_and_across([[[1]], []], lambda samples: 0.0)


@pytest.mark.parametrize("seed", range(6))
def test_self_bleu_equals_sentence_bleu_of_each_sequence_against_all_the_others(seed):
    rng = random.Random(seed)
    sequences = [[rng.randrange(5) for _ in range(rng.randrange(0, 9))] for _ in range(rng.randrange(2, 12))]
    expected = [
        sentence_bleu(sequences[i], [s for j, s in enumerate(sequences) if j != i]) for i in range(len(sequences))
    ]
    score, scored = self_bleu(sequences)
    assert scored == len(sequences)
    assert score == pytest.approx(sum(expected) / len(expected), abs=1e-12)
