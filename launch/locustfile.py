"""The locustfile `troupe loadtest` runs: users that post prompts to a `troupe serve`
service (or any service with the same API) in a closed loop.

Locust loads this file in its own process (gevent patches that process's sockets and
threads, so nothing in troupe imports it). Options it adds to locust's command line:

    --api generate|completions|chat   POST /generate with a JSON body (default), or the
                                      OpenAI-compatible /v1/completions, /v1/chat/completions
    --prompt-file F                   prompts, one per line: a JSON object with "prompt"
                                      (as in the example's train.jsonl) or plain text;
                                      default: a few built-in arithmetic prompts
    --max-new-tokens N, --temperature T, --ignore-eos   the sampling of every request
    --samples-file F                  where to write every request's (start, latency, ok,
                                      completion tokens) when locust quits, one JSON per
                                      line: `launch.loadtest` computes the summary from it

A response counts as a failure unless it is a 200 whose JSON has the text and token
counts; its message gives the status and the service's error message.
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Any

from locust import FastHttpUser, events, task

BUILT_IN_PROMPTS = ["12+7=", "3+15=", "20-4=", "9+9=", "17-8=", "6+13=", "11-11=", "2+19="]
ROUTES = {"generate": "/generate", "completions": "/v1/completions", "chat": "/v1/chat/completions"}
samples: list[dict[str, Any]] = []
"""Every request of this run, in the order they ended."""


@events.init_command_line_parser.add_listener
def add_options(parser: Any) -> None:
    parser.add_argument("--api", choices=sorted(ROUTES), default="generate", help="the endpoint to load")
    parser.add_argument("--prompt-file", default="", help="prompts, one per line (JSON with 'prompt', or text)")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="tokens to generate per request")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (0: greedy)")
    parser.add_argument("--ignore-eos", action="store_true", help="generate max-new-tokens every time")
    parser.add_argument("--samples-file", default="", help="write every request's timing here at the end")


@events.quitting.add_listener
def write_samples(environment: Any, **_: Any) -> None:
    path = environment.parsed_options.samples_file
    if path:
        Path(path).write_text("".join(json.dumps(sample) + "\n" for sample in samples))


def read_prompts(path: str) -> list[str]:
    if not path:
        return BUILT_IN_PROMPTS
    prompts = []
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = line
        prompts.append(row["prompt"] if isinstance(row, dict) and "prompt" in row else line)
    if not prompts:
        raise ValueError(f"{path} has no prompts")
    return prompts


def request_body(api: str, prompt: str, options: Any) -> dict[str, Any]:
    sampling = {"temperature": options.temperature, "ignore_eos": options.ignore_eos}
    if api == "generate":
        return {"prompt": prompt, "max_new_tokens": options.max_new_tokens, **sampling}
    if api == "completions":
        return {"prompt": prompt, "max_tokens": options.max_new_tokens, **sampling}
    return {"messages": [{"role": "user", "content": prompt}], "max_tokens": options.max_new_tokens, **sampling}


def completion_tokens(api: str, body: dict[str, Any]) -> int:
    """The generated tokens a 200 reports; KeyError when the body lacks them."""
    if api == "generate":
        if not isinstance(body["response"], str):
            raise TypeError("response is not a string")
        return int(body["completion_tokens"])
    if not body["choices"]:
        raise IndexError("no choices")
    return int(body["usage"]["completion_tokens"])


class ServiceUser(FastHttpUser):
    """Sends one request, waits for its response, sends the next: no think time, so
    the load grows with the number of users."""

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.api = options.api
        self.prompts = itertools.cycle(read_prompts(options.prompt_file))

    @task
    def generate(self) -> None:
        options = self.environment.parsed_options
        body = request_body(self.api, next(self.prompts), options)
        started_at, started = time.time(), time.perf_counter()
        with self.client.post(ROUTES[self.api], json=body, name=ROUTES[self.api], catch_response=True) as response:
            tokens, ok = 0, False
            if response.status_code == 200:
                try:
                    tokens, ok = completion_tokens(self.api, response.json()), True
                except (ValueError, KeyError, IndexError, TypeError) as error:  # a 200 with the wrong body fails
                    response.failure(f"200 without the expected body ({type(error).__name__}: {error})")
            else:
                response.failure(f"{response.status_code}: {error_message(response)}")
            if ok:
                response.success()
        samples.append({"start": started_at, "latency_s": time.perf_counter() - started, "ok": ok,
                        "completion_tokens": tokens})


def error_message(response: Any) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):  # not our error body: show what came
        return (response.text or "")[:200]
