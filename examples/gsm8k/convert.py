"""Convert original GSM8K rows into the rows examples/gsm8k-grpo.yaml reads.

    python examples/gsm8k/convert.py --in grade_school_math/data/train.jsonl --out data/gsm8k/train.jsonl

An original row (github.com/openai/grade-school-math, ``grade_school_math/data``)::

    {"question": "Natalia sold clips to ...", "answer": "Natalia sold 48/2 = <<48/2=24>>24 ... #### 72"}

becomes::

    {"messages": [{"role": "user", "content": "Natalia sold clips to ... Let's think step by step
                   and output the final answer after \\"####\\"."}],
     "ground_truth": "72", "data_source": "openai/gsm8k"}

The prompt is one user message, so the controller renders it with the tokenizer's
chat template. The ground truth is the number after ``####`` in the reference
solution, read by the same parser the ``gsm8k`` reward uses
(`roles.rewards.gsm8k.extract_gsm8k_answer`), so it is already canonical
(``1,000`` -> ``1000``). The solution itself is not kept: the reward needs only the
number, and a shorter row is a shorter dataset to load.

A row without a question, or whose answer has no ``#### <number>``, stops the
conversion with an error naming its line: a silently skipped row would shrink the
dataset without anyone noticing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script: `roles` lives at the repository root
    sys.path.insert(0, str(ROOT))

from roles.rewards.gsm8k import extract_gsm8k_answer

DATA_SOURCE = "openai/gsm8k"
"""Selects the gsm8k reward in the topology's ``rewards.by_data_source``."""
INSTRUCTION = 'Let\'s think step by step and output the final answer after "####".'
"""Appended to every question: the strict gsm8k reward reads the number after ``####``."""


class ConversionError(ValueError):
    """A row cannot be converted; the message names its file and line."""


def convert_row(row: Any, location: str) -> dict[str, Any]:
    """Return the topology's row for one original GSM8K row.

    Args:
        row: ``{"question": str, "answer": str}``; the answer ends with ``#### <number>``.
        location: ``file:line``, for errors.

    Raises:
        ConversionError: a column is missing or not a string, or the answer has no ``#### <number>``.
    """
    if not isinstance(row, dict):
        raise ConversionError(f"{location}: expected a JSON object, got {type(row).__name__}")
    for key in ("question", "answer"):
        if not isinstance(row.get(key), str):
            raise ConversionError(
                f"{location}: column {key!r} is missing or not a string (columns: {sorted(row)}); "
                'original GSM8K rows are {"question": ..., "answer": "... #### <number>"}'
            )
    if "####" not in row["answer"]:
        raise ConversionError(
            f"{location}: the answer has no '####' line, so it names no final answer; "
            "original GSM8K solutions end with '#### <number>'"
        )
    ground_truth = extract_gsm8k_answer(row["answer"], "strict")
    if ground_truth is None:
        tail = row["answer"][row["answer"].index("####") :][:40]
        raise ConversionError(f"{location}: '####' is not followed by a number ({tail!r}); fix the row or drop it")
    content = f"{row['question'].strip()} {INSTRUCTION}"
    return {"messages": [{"role": "user", "content": content}], "ground_truth": ground_truth, "data_source": DATA_SOURCE}


def convert_file(source: Path, destination: Path) -> int:
    """Convert every row of the JSONL file ``source`` into ``destination``; return the row count.

    Nothing is written when a row fails: the rows are converted first, then written.

    Raises:
        ConversionError: a line is not JSON, a row cannot be converted, or the file has no rows.
    """
    converted = []
    with source.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            location = f"{source}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                # Re-raised with the file and line: json alone names neither.
                raise ConversionError(f"{location}: malformed JSON ({error.msg}); expected one object per line") from error
            converted.append(convert_row(row, location))
    if not converted:
        raise ConversionError(f"{source} has no rows")
    destination.parent.mkdir(parents=True, exist_ok=True)
    with destination.open("w", encoding="utf-8") as out:
        for row in converted:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    return len(converted)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--in", dest="source", type=Path, required=True, help="original GSM8K JSONL file")
    parser.add_argument("--out", type=Path, required=True, help="JSONL file to write (its directory is created)")
    args = parser.parse_args()
    try:
        count = convert_file(args.source, args.out)
    except (ConversionError, OSError) as error:  # a clean message and exit code 1, not a traceback
        parser.exit(1, f"error: {error}\n")
    print(f"wrote {count} rows to {args.out}")


if __name__ == "__main__":
    main()
