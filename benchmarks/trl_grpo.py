"""The baseline of benchmarks/vs_trl.py: TRL's GRPOTrainer with the benchmark's settings,
in a process of its own.

    python benchmarks/trl_grpo.py SETTINGS.json STEPS.jsonl

reads a `benchmarks.vs_trl.GRPOSettings` (JSON), trains `steps` optimizer steps and
writes one JSON object per step to STEPS.jsonl: ``step``, ``step_s`` (from the step's
first micro-batch, which generates, to the end of its optimizer step, as the trainer's
callbacks see it), ``reward`` (mean over the step's samples), ``response_length``,
``entropy``, ``grad_norm``; a last line ``{"train_s", "torch_threads", "config"}``: the
whole loop's seconds, torch's thread count, and the GRPOConfig fields the comparison
depends on as TRL resolved them (`check_resolved` fails the run if one is off).

The vs_trl parent starts this file as a subprocess so that TRL's torch threads, its
memory and its imports stay out of the troupe runs; torch keeps its default thread
count here (all cores), the setting a TRL user gets.

How the settings map onto GRPOConfig (read from trl/trainer/grpo_trainer.py, TRL 1.16):

- one optimizer step = one generation batch: ``generation_batch_size = prompts x
  samples`` with ``per_device_train_batch_size = micro_batch_size`` and
  ``gradient_accumulation_steps = prompts x samples / micro_batch_size``, so
  ``steps_per_generation`` equals the accumulation steps and each batch is generated
  once and trained on once (``num_iterations = 1``); TRL then computes no "old"
  log-probs (its ratio is against its own detached log-probs), and neither does troupe
  (``recompute_logprobs: auto`` takes the update's own detached log-probs the same way);
- ``loss_type="dapo"`` divides the summed per-token loss by the tokens of the whole
  generation batch: troupe's ``token-mean`` over its one mini-batch;
- ``scale_rewards="group"``: (r - group mean) / (group std + 1e-4), std with Bessel's
  correction, as troupe's ``grpo`` advantage with ``eps: 1e-4``;
- ``bf16`` only with ``autocast: bfloat16`` (TRL defaults to True: autocast, as troupe's
  trainer ``autocast``; the benchmark defaults to float32 throughout) and
  ``gradient_checkpointing=False`` (TRL defaults to True; troupe does not checkpoint);
- ``lr_scheduler_type="constant"`` (Trainer defaults to linear decay); AdamW with the
  given betas, epsilon and weight decay, gradients clipped to ``grad_clip``;
- ``shuffle_dataset=False``: prompts in file order, as troupe's ``data.shuffle: false``
  (the benchmark shuffled the file once, with a seed).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# Nothing here may reach the network: the model and data are local, and TRL's
# telemetry ping and the Hub lookups would only add noise to the timings.
for _name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY"):
    os.environ.setdefault(_name, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from benchmarks.vs_trl import GRPOSettings  # noqa: E402


def read_rows(path: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def build_dataset(settings: GRPOSettings) -> Any:
    """The benchmark's JSONL rows as an in-memory `datasets.Dataset`: ``prompt`` holds the
    chat messages (rendered by TRL with the tokenizer's chat template, as troupe renders
    them) or the plain prompt string; ``ground_truth`` and ``data_source`` go to the reward."""
    from datasets import Dataset

    rows = read_rows(settings.data)
    return Dataset.from_list([
        {"prompt": row["messages"] if "messages" in row else row["prompt"],
         "ground_truth": str(row["ground_truth"]), "data_source": row["data_source"]}
        for row in rows
    ])


def reward_function(settings: GRPOSettings, tokenizer: Any) -> Any:
    """TRL's reward callable around the same `RewardRouter` troupe's reward role builds
    from the same config, given the same prompt text (rendered) and response text."""
    from roles.rewards import RewardRouter, RewardsConfig

    router = RewardRouter.from_config(RewardsConfig.model_validate(settings.rewards))

    def text_of(prompt: Any) -> str:
        if isinstance(prompt, str):
            return prompt
        return tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)

    def graded(prompts: list[Any], completions: list[Any], ground_truth: list[str], data_source: list[str],
               **unused: Any) -> list[float]:
        responses = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
        results = router.score_batch([text_of(p) for p in prompts], responses, ground_truth, data_source)
        return [result.score for result in results]

    graded.__name__ = "benchmark_reward"  # TRL logs rewards/<name>/mean
    return graded


def grpo_config(settings: GRPOSettings, output_dir: str) -> Any:
    from trl import GRPOConfig

    batch = settings.prompts_per_step * settings.samples_per_prompt
    return GRPOConfig(
        output_dir=output_dir,
        use_cpu=True,
        bf16=settings.autocast == "bfloat16",
        fp16=False,
        gradient_checkpointing=False,
        seed=settings.seed,
        max_steps=settings.steps,
        per_device_train_batch_size=settings.micro_batch_size,
        gradient_accumulation_steps=batch // settings.micro_batch_size,
        generation_batch_size=batch,
        num_generations=settings.samples_per_prompt,
        num_iterations=settings.epochs,
        max_completion_length=settings.max_new_tokens,
        temperature=settings.temperature,
        top_p=1.0,
        top_k=0,
        learning_rate=settings.learning_rate,
        lr_scheduler_type="constant",
        warmup_steps=0,
        adam_beta1=settings.adam_betas[0],
        adam_beta2=settings.adam_betas[1],
        adam_epsilon=settings.adam_eps,
        weight_decay=settings.weight_decay,
        max_grad_norm=settings.grad_clip,
        beta=settings.kl_coef,
        epsilon=settings.clip_ratio,
        epsilon_high=settings.clip_ratio,
        loss_type="dapo",
        scale_rewards="group",
        mask_truncated_completions=False,
        shuffle_dataset=False,
        remove_unused_columns=False,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
    )


def check_resolved(args: Any, settings: GRPOSettings) -> dict[str, Any]:
    """The GRPOConfig fields the comparison depends on, as TRL resolved them; raises when
    one is not what the benchmark asked for (a TRL or transformers release that renames
    or re-derives a field would otherwise change the baseline silently)."""
    batch = settings.rows_per_step
    expected = {
        "bf16": settings.autocast == "bfloat16", "fp16": False, "gradient_checkpointing": False, "lr_scheduler_type": "constant",
        "generation_batch_size": batch, "steps_per_generation": batch // settings.micro_batch_size,
        "gradient_accumulation_steps": batch // settings.micro_batch_size, "num_iterations": settings.epochs,
        "beta": settings.kl_coef, "loss_type": "dapo", "scale_rewards": "group", "shuffle_dataset": False,
        "max_grad_norm": settings.grad_clip, "learning_rate": settings.learning_rate,
    }
    resolved = {name: getattr(args, name) for name in expected}
    resolved["lr_scheduler_type"] = str(getattr(resolved["lr_scheduler_type"], "value", resolved["lr_scheduler_type"]))
    wrong = {name: value for name, value in resolved.items() if value != expected[name]}
    if wrong:
        raise RuntimeError(f"GRPOConfig resolved {wrong}; the benchmark needs {({k: expected[k] for k in wrong})}")
    return {**resolved, "optim": str(getattr(args.optim, "value", args.optim))}


def step_recorder(out: Any) -> Any:
    """A TrainerCallback writing each optimizer step's time and logged numbers to `out`."""
    from transformers import TrainerCallback

    class StepRecorder(TrainerCallback):
        def __init__(self) -> None:
            self.began = 0.0
            self.step_s = 0.0

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.began = time.monotonic()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.step_s = time.monotonic() - self.began

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
            if not logs or "reward" not in logs:  # the summary line at the end of train()
                return
            record = {"step": state.global_step, "step_s": self.step_s, "reward": logs["reward"],
                      "response_length": logs.get("completions/mean_length"), "entropy": logs.get("entropy"),
                      "grad_norm": logs.get("grad_norm")}
            out.write(json.dumps(record) + "\n")
            out.flush()

    return StepRecorder()


def main() -> None:
    settings_path, steps_path = sys.argv[1], sys.argv[2]
    settings = GRPOSettings.from_json(Path(settings_path).read_text())
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(settings.model, padding_side="left", truncation_side="left")
    model = AutoModelForCausalLM.from_pretrained(settings.model, dtype=getattr(torch, settings.dtype))
    output_dir = str(Path(steps_path).parent / "trl-output")
    with open(steps_path, "w") as out:
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=reward_function(settings, tokenizer),
            args=grpo_config(settings, output_dir),
            train_dataset=build_dataset(settings),
            processing_class=tokenizer,
            callbacks=[step_recorder(out)],
        )
        resolved = check_resolved(trainer.args, settings)
        started = time.monotonic()
        trainer.train()
        out.write(json.dumps({"train_s": time.monotonic() - started, "torch_threads": torch.get_num_threads(),
                              "config": resolved}) + "\n")


if __name__ == "__main__":
    main()
