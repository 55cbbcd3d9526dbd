"""`troupe serve MODEL_DIR`: serve a model over HTTP (FastAPI, dynamic batching).

MODEL_DIR is a Hugging Face model directory or a peft adapter directory, served on the
base model its adapter_config.json names (or ``--base-model``).

See docs/serving.md for the routes and launch/serving/ for how it is built.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL_DIR", type=Path,
                        help="a Hugging Face model directory, or a peft adapter directory (troupe export [--adapter] "
                             "writes either)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on; 0 picks a free one")
    batching = parser.add_argument_group("batching")
    batching.add_argument("--max-batch", type=int, default=8, metavar="B",
                          help="most requests generated together; 1 turns batching off (default 8)")
    batching.add_argument("--max-wait-ms", type=float, default=0.0, metavar="W",
                          help="longest a request arriving at an idle server waits for others to join its batch; "
                               "requests that queue while a batch runs go together into the next one anyway "
                               "(default 0: start at once)")
    batching.add_argument("--max-queue", type=int, default=64, metavar="Q",
                          help="most requests waiting for a batch; more get 503 with Retry-After (default 64)")
    batching.add_argument("--request-timeout-s", type=float, default=300.0,
                          help="a request still unanswered after this gets 504 (default 300)")
    model = parser.add_argument_group("model")
    model.add_argument("--tool-format", choices=("hermes", "json"), default="hermes",
                       help="how the model writes tool calls, read back as OpenAI tool_calls (default hermes: "
                            "<tool_call>{...}</tool_call>, as Qwen's templates)")
    model.add_argument("--engine", choices=("hf", "vllm"), default="hf",
                       help="hf: transformers, CPU or GPU (default); vllm: vLLM on a GPU, if installed")
    model.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when there is one)")
    model.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                       help="default: float32 on a CPU, bfloat16 on a GPU")
    model.add_argument("--threads", type=int, default=None, help="torch threads on a CPU (default: one per core)")
    model.add_argument("--base-model", type=Path, default=None, metavar="DIR",
                       help="an adapter's base model directory (default: the one its adapter_config.json names)")
    model.add_argument("--served-model-name", default=None,
                       help="the name the OpenAI endpoints report (default: the directory's name)")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    parser.add_argument("--access-log", action="store_true", help="log every request")


def run(args: argparse.Namespace) -> int:
    from roles.lora import ADAPTER_CONFIG_FILE

    if not (args.model / "config.json").is_file() and not (args.model / ADAPTER_CONFIG_FILE).is_file():
        print(f"troupe serve: {args.model} is neither a Hugging Face model directory (config.json) nor a peft adapter "
              f"directory ({ADAPTER_CONFIG_FILE}); troupe export RUN_DIR OUT_DIR writes one", file=sys.stderr)
        return 2
    if args.engine == "vllm" and importlib.util.find_spec("vllm") is None:
        print("troupe serve: --engine vllm needs vLLM, an optional extra: pip install 'troupe-rl[vllm]' "
              "(or serve with the default engine, hf)", file=sys.stderr)
        return 2

    from pydantic import ValidationError

    from launch.serving.server import open_listener, serve
    from launch.serving.service import ServeConfig, adapter_base

    try:
        adapter_base(args.model, args.base_model)  # an adapter whose base is missing fails here, not after startup
    except ValueError as error:
        print(f"troupe serve: {error}", file=sys.stderr)
        return 2
    try:
        config = ServeConfig(
            model=args.model, base_model=args.base_model, host=args.host, port=args.port, max_batch=args.max_batch,
            max_wait_ms=args.max_wait_ms, max_queue=args.max_queue, request_timeout_s=args.request_timeout_s,
            engine=args.engine, device=args.device, dtype=args.dtype, threads=args.threads,
            served_model_name=args.served_model_name, tool_format=args.tool_format,
        )
    except ValidationError as error:
        for problem in error.errors():
            print(f"troupe serve: --{str(problem['loc'][0]).replace('_', '-')}: {problem['msg']}", file=sys.stderr)
        return 2
    try:
        listener = open_listener(config)
    except OSError as error:  # the port is taken, or the address is not ours
        print(f"troupe serve: cannot listen on {args.host}:{args.port}: {error.strerror or error}", file=sys.stderr)
        return 1
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # the log says when the model is loaded
    return serve(config, listener, log_level=args.log_level, access_log=args.access_log)
