"""The MATH reward: math-verify in a killable worker process, correctness and format terms, a time limit from any thread."""

import os
import signal
import threading
import time

import psutil
import pytest

from roles.rewards import score_math, shutdown_symbolic_workers
from roles.sandbox.symbolic import SymbolicEquivalenceChecker, SymbolicVerdict, shared_symbolic_checker

# math-verify's simplify((x+1)**2000 - (x+2)**2000) runs for minutes in little memory
SLOW_RESPONSE = r"The answer is \boxed{(x+1)^{2000}}"
SLOW_REFERENCE = "(x+2)^{2000}"
TIME_LIMIT_SLACK_S = 0.75


def child_pids():
    return {child.pid for child in psutil.Process().children(recursive=True)}


@pytest.fixture(autouse=True, scope="module")
def no_symbolic_worker_outlives_these_tests():
    yield
    worker_pid = shared_symbolic_checker().worker_pid
    shutdown_symbolic_workers()
    assert shared_symbolic_checker().worker_pid is None
    assert worker_pid is None or worker_pid not in child_pids()


def score_in_worker_thread(*args, **kwargs):
    """Call score_math from a non-main thread, as a role's compute thread does."""
    outcome = {}

    def run():
        started = time.monotonic()
        outcome["result"] = score_math(*args, **kwargs)
        outcome["elapsed_s"] = time.monotonic() - started

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive(), "score_math did not return"
    return outcome["result"], outcome["elapsed_s"]


def test_equal_answers_score_one_with_the_box_content_as_extracted():
    result = score_math("", r"So $\boxed{\dfrac{1}{2}}$.", "0.5", symbolic=False)

    assert (result.score, result.extracted, result.info["match"]) == (1.0, r"\dfrac{1}{2}", "math_verify")
    assert result.terms == {"correctness": 1.0, "format": 1.0}


def test_an_unboxed_answer_is_correct_but_not_in_the_format():
    result = score_math("", "The final answer is $5$.", "5")

    assert (result.score, result.extracted, result.terms) == (1.0, "5", {"correctness": 1.0, "format": 0.0})


def test_the_boxed_method_counts_only_a_boxed_answer_but_still_reports_correctness():
    result = score_math("", "The final answer is $5$.", "5", method="boxed")

    assert (result.score, result.unscored, result.terms) == (0.0, False, {"correctness": 1.0, "format": 0.0})
    assert score_math("", r"so \boxed{5}", "5", method="boxed").score == 1.0


def test_format_score_and_format_weight_follow_verl_and_trl():
    assert score_math("", r"\boxed{4}", "5", format_score=0.1).score == 0.1
    assert score_math("", "The final answer is $4$.", "5", format_score=0.1).score == 0.0
    assert score_math("", r"\boxed{5}", "5", format_weight=0.5).score == 1.5
    assert score_math("", "The final answer is $5$.", "5", format_weight=0.5).score == 1.0


def test_the_last_box_is_the_answer_so_an_intermediate_box_does_not_count():
    result = score_math("", r"Each box holds \boxed{2}, so in total \boxed{6}.", "6")

    assert (result.score, result.extracted) == (1.0, "6")


def test_ground_truth_may_be_a_full_solution_with_its_own_box():
    solution = r"We get $x = \boxed{3}$ after we first find \boxed{2}... no: $\boxed{\frac{6}{2}}$."
    assert score_math("", r"\boxed{3}", solution).score == 1.0


def test_a_decimal_that_only_approximates_a_fraction_scores_zero():
    assert score_math("", r"\boxed{\frac{1}{3}}", "0.333").score == 0.0


def test_equivalent_expressions_are_recognised_symbolically():
    result = score_math("", r"\boxed{\frac{\sqrt{2}}{2}}", r"\frac{1}{\sqrt2}")

    assert result.score == 1.0
    assert (result.info["match"], result.info["check"]) == ("math_verify", "equivalent")


def test_the_checker_distinguishes_different_expressions():
    result = score_math("", r"\boxed{2x+1}", "2(x+1)")

    assert (result.score, result.unscored, result.info["check"]) == (0.0, False, "different")


def test_symbolic_off_compares_without_simplifying():
    assert score_math("", r"\boxed{2x+2}", "2(x+1)", symbolic=False).score == 0.0
    assert score_math("", r"\boxed{2x+2}", "2(x+1)").score == 1.0


@pytest.mark.parametrize(
    ("response", "reference", "score"),
    [(r"\boxed{(1, 2]}", "(1,2]", 1.0), (r"\boxed{[1, 2)}", "(1, 2]", 0.0), (r"\boxed{\{2, 1\}}", r"\{1,2\}", 1.0)],
)
def test_intervals_and_sets_are_compared_as_such(response, reference, score):
    assert score_math("", response, reference).score == score


def test_a_response_without_any_answer_is_wrong_not_unscored():
    result = score_math("", "I could not solve it.", "5")

    assert (result.score, result.extracted, result.unscored, result.info["match"]) == (0.0, None, False, "none")


def test_time_limit_holds_off_the_main_thread_and_the_result_is_unscored():
    score_in_worker_thread("", r"\boxed{x+x}", "2x")  # start the worker: start-up is not part of the limit
    slow_worker_pid = shared_symbolic_checker().worker_pid

    result, elapsed_s = score_in_worker_thread("", SLOW_RESPONSE, SLOW_REFERENCE, timeout_s=1.0)

    assert 1.0 <= elapsed_s < 1.0 + TIME_LIMIT_SLACK_S
    assert (result.score, result.unscored, result.info["check"]) == (0.0, True, "timed_out")
    assert "correctness" not in result.terms
    assert slow_worker_pid not in child_pids()


def test_a_check_after_a_timeout_runs_in_a_fresh_worker():
    score_in_worker_thread("", SLOW_RESPONSE, SLOW_REFERENCE, timeout_s=0.5)

    result, _ = score_in_worker_thread("", r"\boxed{x+x}", "2x")

    assert result.score == 1.0
    assert shared_symbolic_checker().worker_pid in child_pids()


def test_timeout_can_count_as_a_wrong_answer_instead():
    result, _ = score_in_worker_thread("", SLOW_RESPONSE, SLOW_REFERENCE, timeout_s=0.5, on_timeout="zero")

    assert (result.score, result.unscored, result.info["check"]) == (0.0, False, "timed_out")


def test_a_worker_that_died_between_checks_is_replaced():
    assert score_math("", r"\boxed{x+x}", "2x").score == 1.0
    dead_pid = shared_symbolic_checker().worker_pid
    os.kill(dead_pid, signal.SIGKILL)
    psutil.Process(dead_pid).wait(timeout=5)

    assert score_math("", r"\boxed{x \cdot x}", "x^2").score == 1.0
    assert shared_symbolic_checker().worker_pid not in (None, dead_pid)


def test_a_worker_killed_during_a_check_makes_the_result_unscored():
    assert score_math("", r"\boxed{x+x}", "2x").score == 1.0  # start the worker
    killer = threading.Timer(0.5, os.kill, args=(shared_symbolic_checker().worker_pid, signal.SIGKILL))
    killer.start()
    started = time.monotonic()

    result = score_math("", SLOW_RESPONSE, SLOW_REFERENCE, timeout_s=30.0)

    killer.join()
    assert time.monotonic() - started < 5.0
    assert (result.score, result.unscored, result.info["check"]) == (0.0, True, "worker_died")


def test_concurrent_callers_each_get_their_own_verdict():
    cases = [(r"\boxed{2x+2}", "2(x+1)", 1.0), (r"\boxed{2x+1}", "2(x+1)", 0.0)] * 3
    scores = [None] * len(cases)

    def grade(index, response, reference):
        scores[index] = score_math("", response, reference).score

    threads = [threading.Thread(target=grade, args=(index, *case[:2])) for index, case in enumerate(cases)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert scores == [case[2] for case in cases]


def test_a_private_checker_stops_its_worker_on_close():
    checker = SymbolicEquivalenceChecker()
    check = checker.check("2x", r"\boxed{x + x}", timeout_s=5.0)
    assert (check.verdict, check.extracted) == (SymbolicVerdict.EQUIVALENT, "x + x")
    worker_pid = checker.worker_pid

    checker.close()

    assert checker.worker_pid is None
    assert worker_pid not in child_pids()


def test_an_answer_math_verify_cannot_read_is_different_with_nothing_extracted():
    checker = SymbolicEquivalenceChecker()
    try:
        check = checker.check("x", "no answer here", timeout_s=5.0)
    finally:
        checker.close()

    assert (check.verdict, check.extracted) == (SymbolicVerdict.DIFFERENT, None)


@pytest.mark.parametrize(
    ("options", "message"),
    [({"on_timeout": "drop"}, "on_timeout must be"), ({"timeout_s": 0}, "timeout_s must be positive")],
)
def test_invalid_options_are_rejected(options, message):
    with pytest.raises(ValueError, match=message):
        score_math("", r"\boxed{x+x}", "2x", **options)


@pytest.mark.parametrize("ground_truth", ["", "  ", None, r"\boxed{3", r"so \boxed{}"])
def test_unusable_ground_truth_is_rejected(ground_truth):
    with pytest.raises(ValueError, match="MATH ground_truth"):
        score_math("", r"\boxed{3}", ground_truth)
