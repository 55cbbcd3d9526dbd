"""`troupe serve` and `troupe loadtest` end to end: a real uvicorn server on a loopback
port (one per module), real HTTP, a real locust process.

The model is the arithmetic example's, built in quick mode, with its advertised
context raised from 64 to 2048 positions (rotary embeddings extend to any length): a
generation of ``LONG`` tokens then lasts long enough (a second or more) for other
requests to arrive while it runs, which the batching, overload and event-loop tests
need. The server runs with ``--max-batch 4 --max-queue 4``, so four requests sent
while a long one runs are all queued, and a fifth is one too many.
"""

from __future__ import annotations

import importlib.util
import json
import re
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from examples.arith.build import build
from tests.e2e.cli import TROUPE, troupe, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

CONTEXT = 2048
LONG = 1200
"""Tokens of a long generation: over a second on a CPU, greedy with ignore_eos."""
MAX_BATCH = MAX_QUEUE = 4


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def post(self, path: str, body: Any, timeout: float = 60, **kwargs: Any) -> httpx.Response:
        return httpx.post(self.url + path, json=body, timeout=timeout, **kwargs)

    def metric(self, name: str, **labels: str) -> float:
        """The value of one sample of GET /metrics (0 when it has none yet)."""
        wanted = name + ("{" + ",".join(f'{key}="{value}"' for key, value in labels.items()) + "}" if labels else "")
        for line in httpx.get(self.url + "/metrics", timeout=10).text.splitlines():
            if line.startswith(wanted + " "):
                return float(line.split()[-1])
        return 0.0


@pytest.fixture(scope="module")
def arith(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("arith")
    build(out, seed=0, quick=True)
    config = json.loads((out / "model" / "config.json").read_text())
    config["max_position_embeddings"] = CONTEXT
    (out / "model" / "config.json").write_text(json.dumps(config))
    return out


@contextmanager
def troupe_serve(arguments: list[str], log: Path) -> Iterator[Server]:
    """`troupe serve ARGUMENTS --port 0` as a real process, once it answers GET /ready;
    stopped with SIGINT at the end, which must end it cleanly."""
    with open(log, "wb") as output:
        process = subprocess.Popen([TROUPE, "serve", *arguments, "--port", "0"], stdout=output, stderr=subprocess.STDOUT)
    try:
        found = wait_for(lambda: re.search(r"on (http://127\.0\.0\.1:\d+) ", log.read_text()) or process.poll(),
                         60, "the startup line")
        assert isinstance(found, re.Match), log.read_text()
        served = Server(found.group(1), process, log)
        wait_for(lambda: httpx.get(served.url + "/ready", timeout=10).status_code == 200, 60, "GET /ready")
        yield served
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert process.returncode == 0, log.read_text()[-3000:]


@pytest.fixture(scope="module")
def server(arith: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with troupe_serve([str(arith / "model"), "--threads", "1", "--max-batch", str(MAX_BATCH),
                       "--max-queue", str(MAX_QUEUE), "--max-wait-ms", "20"],
                      tmp_path_factory.mktemp("serve") / "serve.log") as served:
        yield served


def greedy_reference(model_dir: Path, prompt: str, max_new_tokens: int) -> str:
    from roles.generation import HFBackend, SamplingParams, load_causal_lm

    model, tokenizer = load_causal_lm(model_dir)
    output = HFBackend(model, tokenizer).generate([tokenizer(prompt).input_ids],
                                                  SamplingParams(top_k=1, max_new_tokens=max_new_tokens))
    return output.texts[0]


def events_of(response: httpx.Response) -> list[str]:
    """The ``data:`` payloads of a server-sent event stream, in order."""
    return [line.removeprefix("data: ") for line in response.text.split("\n\n") if line.startswith("data: ")]


def send_and_hang_up(server: Server, path: str, body: dict[str, Any], until: Callable[[], bool], what: str) -> None:
    """Posts `body` on a raw connection and closes it, unread, once `until()` holds: a
    client that gives up on a non-streamed request."""
    host, port = server.url.removeprefix("http://").split(":")
    payload = json.dumps(body).encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n")
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(head.encode() + payload)
        wait_for(until, 30, what)


def start_long_generation(server: Server, pool: ThreadPoolExecutor) -> Future[httpx.Response]:
    """A greedy generation of ``LONG`` tokens, returned once the server is generating it."""
    running = server.metric("troupe_requests_running")
    future = pool.submit(server.post, "/generate", {"prompt": "1+1=", "max_new_tokens": LONG, "temperature": 0,
                                                    "ignore_eos": True})
    wait_for(lambda: server.metric("troupe_requests_running") > running or future.done(), 30, "the long generation")
    assert not future.done(), future.result().text
    return future


def test_health_and_ready_report_a_live_loaded_service(server: Server) -> None:
    assert httpx.get(server.url + "/health").json() == {"status": "alive"}
    ready = httpx.get(server.url + "/ready").json()
    assert ready["status"] == "ready" and ready["context_length"] == CONTEXT and ready["model"] == "model"
    assert httpx.get(server.url + "/v1/models").json()["data"][0]["id"] == "model"


def test_generate_takes_a_json_body_and_answers_the_models_own_response_with_token_counts(
        server: Server, arith: Path) -> None:
    response = server.post("/generate", {"prompt": "12+7=", "max_new_tokens": 10, "temperature": 0})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["response"] == greedy_reference(arith / "model", "12+7=", 10)
    assert body["prompt_tokens"] == 5 and 1 <= body["completion_tokens"] <= 10
    assert body["finish_reason"] in ("stop", "length")
    seeded = [server.post("/generate", {"prompt": "3+4=", "max_new_tokens": 12, "seed": 11}).json()["response"]
              for _ in range(2)]
    assert seeded[0] == seeded[1]


def test_openai_completions_and_chat_answer_in_openais_shapes(server: Server) -> None:
    completion = server.post("/v1/completions", {"model": "anything", "prompt": "12+7=", "max_tokens": 6, "n": 3,
                                                 "seed": 2, "stop": ["\n"]}).json()
    assert completion["object"] == "text_completion" and completion["model"] == "model"
    assert [choice["index"] for choice in completion["choices"]] == [0, 1, 2]
    assert all(choice["finish_reason"] in ("stop", "length") and "\n" not in choice["text"]
               for choice in completion["choices"])
    assert completion["usage"]["prompt_tokens"] == 5
    assert completion["usage"]["total_tokens"] == 5 + completion["usage"]["completion_tokens"]

    greedy = server.post("/v1/completions", {"prompt": "12+7=", "max_tokens": 8, "temperature": 0}).json()
    # the example's chat template puts the messages' contents back to back: the same prompt
    chat = server.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "12+7="}], "max_tokens": 8,
                                                "temperature": 0}).json()
    assert chat["object"] == "chat.completion"
    assert chat["choices"][0]["message"] == {"role": "assistant", "content": greedy["choices"][0]["text"]}
    assert chat["usage"] == greedy["usage"]


def test_chat_with_tools_describes_them_to_the_model_and_takes_a_conversation_with_calls_and_results(
        server: Server, arith: Path) -> None:
    from roles.agents.tool_calls import ToolCall, tool_call_format

    calculator = {"type": "function", "function": {"name": "calculator", "parameters": {"type": "object"}}}
    conversation = [
        {"role": "user", "content": "12*7="},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "calculator", "arguments": '{"expression": "12*7"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "84"},
    ]
    body = {"messages": conversation, "tools": [calculator], "max_tokens": 4, "temperature": 0}
    answer = server.post("/v1/chat/completions", body)
    assert answer.status_code == 200, answer.text
    choice = answer.json()["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] in ("stop", "length", "tool_calls")
    # the example's template takes no tools: the server described them in a system message, in its tool
    # format, and wrote the earlier call as the model would; the contents go back to back
    hermes = tool_call_format("hermes")
    call = hermes.render([ToolCall("calculator", {"expression": "12*7"})])
    expected = hermes.system_prompt([calculator]) + "12*7=" + call + "84"
    prompt = server.post("/v1/completions", {"prompt": expected, "max_tokens": 1}).json()
    assert answer.json()["usage"]["prompt_tokens"] == prompt["usage"]["prompt_tokens"]
    refused = server.post("/v1/chat/completions", {**body, "stream": True})
    assert refused.status_code == 422 and "stream with tools is not supported yet" in refused.text


def test_streams_are_server_sent_events_that_add_up_to_the_response_and_end_with_done(server: Server) -> None:
    whole = server.post("/v1/completions", {"prompt": "9+9=", "max_tokens": 12, "temperature": 0}).json()
    stream = server.post("/v1/completions", {"prompt": "9+9=", "max_tokens": 12, "temperature": 0, "stream": True,
                                             "stream_options": {"include_usage": True}})
    assert stream.headers["content-type"].startswith("text/event-stream")
    events = events_of(stream)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert len(chunks) > 3  # token by token, not one lump
    assert "".join(chunk["choices"][0]["text"] for chunk in chunks if chunk["choices"]) == whole["choices"][0]["text"]
    assert chunks[-2]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]

    chat = events_of(server.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "9+9="}],
                                                          "max_tokens": 12, "temperature": 0, "stream": True}))
    assert chat[-1] == "[DONE]"
    deltas = [json.loads(event)["choices"][0]["delta"] for event in chat[:-1]]
    assert deltas[0] == {"role": "assistant", "content": ""} and deltas[-1] == {}
    assert "".join(delta.get("content", "") for delta in deltas) == whole["choices"][0]["text"]


def test_a_client_leaving_mid_stream_disturbs_nothing(server: Server) -> None:
    body = {"prompt": "5+5=", "max_tokens": 200, "temperature": 0, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=30) as response:
        first = next(response.iter_lines())
        assert first.startswith("data: {")
    after = server.post("/generate", {"prompt": "5+5=", "max_new_tokens": 3})
    assert after.status_code == 200, after.text


def test_a_client_leaving_a_stream_while_queued_leaves_the_queue_depth_at_zero_once_idle(server: Server) -> None:
    body = {"messages": [{"role": "user", "content": "5+5="}], "max_tokens": 50, "stream": True}
    with ThreadPoolExecutor(1) as pool:
        long = start_long_generation(server, pool)
        with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=30) as response:
            lines = response.iter_lines()  # kept: httpx closes the connection once the iterator is collected
            assert next(lines).startswith("data: {")  # the role chunk comes before any token, while it waits
            assert server.metric("troupe_queue_depth") == 1
        wait_for(lambda: server.metric("troupe_queue_depth") == 0, 10, "the departed client's request to leave")
        assert not long.done()  # it left at once, not when the batch ahead of it ended
        assert long.result().status_code == 200
    wait_for(lambda: server.metric("troupe_requests_running") == 0, 30, "an idle server")
    wait_for(lambda: server.metric("troupe_queue_depth") == 0, 10, "queue depth 0 on the idle server")
    after = server.post("/v1/chat/completions", body | {"stream": False, "max_tokens": 3})
    assert after.status_code == 200, after.text
    assert server.metric("troupe_queue_depth") == 0


def test_a_stream_whose_client_left_stops_generating(server: Server) -> None:
    tokens = server.metric("troupe_generated_tokens_total")
    left = server.metric("troupe_requests_total", endpoint="/v1/completions", status="499")
    body = {"prompt": "5+5=", "max_tokens": LONG, "temperature": 0, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=30) as response:
        assert next(response.iter_lines()).startswith("data: {")  # a token has come: it runs
    wait_for(lambda: server.metric("troupe_requests_running") == 0, 30, "the batch to end")
    assert server.metric("troupe_generated_tokens_total") - tokens < LONG / 2
    assert server.metric("troupe_queue_depth") == 0
    wait_for(lambda: server.metric("troupe_requests_total", endpoint="/v1/completions", status="499") == left + 1,
             10, "the stream counted as closed by its client (499)")


def test_a_non_streamed_request_whose_client_left_stops_generating(server: Server) -> None:
    tokens = server.metric("troupe_generated_tokens_total")
    left = server.metric("troupe_requests_total", endpoint="/generate", status="499")
    send_and_hang_up(server, "/generate", {"prompt": "5+5=", "max_new_tokens": LONG, "temperature": 0,
                                           "ignore_eos": True},
                     lambda: server.metric("troupe_generated_tokens_total") > tokens, "the first tokens")
    wait_for(lambda: server.metric("troupe_requests_running") == 0, 30, "the batch to end")
    assert server.metric("troupe_generated_tokens_total") - tokens < LONG / 2
    assert server.metric("troupe_queue_depth") == 0
    wait_for(lambda: server.metric("troupe_requests_total", endpoint="/generate", status="499") == left + 1,
             10, "the request counted as closed by its client (499)")
    after = server.post("/generate", {"prompt": "5+5=", "max_new_tokens": 3})
    assert after.status_code == 200, after.text


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_a_json_body_without_a_json_content_type_gets_415_naming_the_header_to_send(
        server: Server, content_type: str | None) -> None:
    headers = {"content-type": content_type} if content_type else {}
    response = httpx.post(server.url + "/generate", content=json.dumps({"prompt": "1+1=", "max_new_tokens": 2}),
                          headers=headers, timeout=30)
    assert response.status_code == 415, response.text
    message = response.json()["error"]["message"]
    assert "Content-Type: application/json" in message and (content_type or "no Content-Type") in message
    fine = httpx.post(server.url + "/generate", content=json.dumps({"prompt": "1+1=", "max_new_tokens": 2}),
                      headers={"content-type": "application/json; charset=utf-8"}, timeout=30)
    assert fine.status_code == 200, fine.text


def test_nul_and_control_characters_in_a_prompt_go_to_the_tokenizer_as_they_are(server: Server, arith: Path) -> None:
    from transformers import AutoTokenizer

    prompt = "1\x00+1=\x07\x1b[0m\x7f"
    raw = json.dumps({"prompt": prompt, "max_new_tokens": 3, "temperature": 0})  # \u0000 escapes, as JSON has them
    response = httpx.post(server.url + "/generate", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    assert response.json()["prompt_tokens"] == len(AutoTokenizer.from_pretrained(arith / "model")(prompt).input_ids)


@pytest.mark.parametrize(("path", "raw", "param"), [
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "1+1=\\ud800"}]}', "messages.0.content"),
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": [{"type": "text", "text": "\\udc00"}]}]}',
     "messages.0.content"),
    ("/generate", '{"prompt": "1+1=", "stop": "\\ud800"}', "stop"),
    ("/generate", '{"prompt": "1+1=\\ud800"}', "prompt"),
])
def test_text_with_a_lone_surrogate_gets_a_422_naming_the_field(server: Server, path: str, raw: str,
                                                                param: str) -> None:
    response = httpx.post(server.url + path, content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["message"].startswith(param + ": ") and error["param"] == param
    assert "surrogate" in error["message"] or "unicode" in error["message"]


def test_a_tiny_temperature_decodes_greedily_and_fails_no_batch(server: Server) -> None:
    greedy = server.post("/generate", {"prompt": "3+4=", "max_new_tokens": 12, "temperature": 0}).json()["response"]
    tiny = [{"prompt": "3+4=", "max_new_tokens": 12, "temperature": temperature}
            for temperature in (1e-30, 1e-45, 5e-324)]
    batch_mate = {"prompt": "3+4=", "max_new_tokens": 12, "top_k": 10**30, "seed": 5}
    with ThreadPoolExecutor(1 + len(tiny) + 1) as pool:
        long = start_long_generation(server, pool)
        queued = [pool.submit(server.post, "/generate", body) for body in [*tiny, batch_mate]]
        wait_for(lambda: server.metric("troupe_queue_depth") == len(queued), 30, "the requests queued together")
        responses = [future.result() for future in queued]
        assert long.result().status_code == 200
    assert [response.status_code for response in responses] == [200] * len(queued), [r.text for r in responses]
    assert [response.json()["response"] for response in responses[:-1]] == [greedy] * len(tiny)
    untruncated = server.post("/generate", batch_mate | {"top_k": 0}).json()["response"]
    assert responses[-1].json()["response"] == untruncated


@pytest.mark.parametrize(("content", "status", "says", "param"), [
    ('{"prompt": "12+7=",', 422, "not valid JSON", None),
    (None, 422, "send a JSON object as the body", None),
    ('["12+7="]', 422, "must be a JSON object", None),
    ({"prompt": 12}, 422, "prompt: Input should be a valid string", "prompt"),
    ({"prompt": "1+1=", "max_new_tokens": "8"}, 422, "max_new_tokens: Input should be a valid integer",
     "max_new_tokens"),
    ({"prompt": "1+1=", "max_new_tokens": 2.5}, 422, "max_new_tokens", "max_new_tokens"),
    ({"max_new_tokens": 4}, 422, "prompt: required", "prompt"),
    ({"prompt": ""}, 422, "prompt: String should have at least 1 character", "prompt"),
    ({"prompt": "1+1=", "temperature": 2.5}, 422, "temperature: Input should be less than or equal to 2",
     "temperature"),
    ({"prompt": "1+1=", "top_p": 0}, 422, "top_p: Input should be greater than 0", "top_p"),
    ({"prompt": "1+1=", "max_new_tokens": 0}, 422, "max_new_tokens: Input should be greater than or equal to 1",
     "max_new_tokens"),
    ({"prompt": "1+1=", "seed": -1}, 422, "seed", "seed"),
    ({"prompt": "1+1=", "stop": ["a", "b", "c", "d", "e"]}, 422, "at most 4 stop strings", "stop"),
    ({"prompt": "1+1=", "stop": "x" * 100_000, "max_new_tokens": 2}, 422,
     "stop: Value error, a stop string is at most 256 characters, got one of 100000", "stop"),
    ({"prompt": "1+1=", "temprature": 0.5}, 422, "temprature: Extra inputs are not permitted", "temprature"),
    ({"prompt": "1" * (CONTEXT - 8), "max_new_tokens": 16}, 400,
     (f"the prompt ({CONTEXT - 8} tokens) plus max_new_tokens (16) is {CONTEXT + 8} tokens, over the model's "
      f"context of {CONTEXT} tokens (max_position_embeddings): shorten the prompt or set max_new_tokens to at most 8"),
     "max_new_tokens"),
    ({"prompt": "1" * CONTEXT}, 400, f"the prompt is {CONTEXT} tokens and the model's context is {CONTEXT} tokens",
     "prompt"),
    ({"prompt": "1" * (100 * CONTEXT)}, 400, "no prompt over", "prompt"),
])
def test_bad_input_to_generate_gets_a_clear_4xx_naming_the_problem(
        server: Server, content: Any, status: int, says: str, param: str | None) -> None:
    if isinstance(content, (dict, type(None))):
        response = httpx.post(server.url + "/generate", json=content, timeout=30)
    else:
        response = httpx.post(server.url + "/generate", content=content, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert says in error["message"] and error["param"] == param and error["code"] == status
    assert httpx.get(server.url + "/health").status_code == 200


@pytest.mark.parametrize(("path", "body", "status", "says"), [
    ("/v1/completions", {"prompt": "1+1=", "n": 0}, 422, "n: Input should be greater than or equal to 1"),
    ("/v1/completions", {"prompt": "1+1=", "presence_penalty": 0.5}, 422, "only 0 is supported"),
    ("/v1/completions", {"prompt": "1+1=", "stream": "yes"}, 422, "stream: Input should be a valid boolean"),
    ("/v1/completions", {"prompt": "1+1=", "max_tokens": 2, "stream_options": {"include_usage": True}}, 422,
     "stream_options: Value error, stream_options is only allowed when stream is true"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "1+1="}], "max_tokens": 2, "stream": False,
                              "stream_options": {}}, 422,
     "stream_options: Value error, stream_options is only allowed when stream is true"),
    ("/v1/completions", {"prompt": "1" * 2000, "max_tokens": 100}, 400, "set max_tokens to at most 48"),
    ("/v1/chat/completions", {"messages": []}, 422, "messages: List should have at least 1 item"),
    ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "hi"}]}, 422, "messages.0.role"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "1" * 2000}], "max_completion_tokens": 60},
     400, "set max_completion_tokens to at most 48"),
])
def test_bad_input_to_the_openai_endpoints_gets_a_clear_4xx(
        server: Server, path: str, body: dict, status: int, says: str) -> None:
    response = server.post(path, body)
    assert response.status_code == status, response.text
    assert says in response.json()["error"]["message"]


def test_the_event_loop_answers_while_a_long_generation_runs(server: Server) -> None:
    tokens_before = server.metric("troupe_generated_tokens_total")
    with ThreadPoolExecutor(2) as pool:
        long = start_long_generation(server, pool)
        health = httpx.get(server.url + "/health", timeout=10)
        # answered after /health: had the loop waited for the generation, all LONG tokens would be counted
        tokens_so_far = server.metric("troupe_generated_tokens_total") - tokens_before
        body = long.result().json()
    assert health.status_code == 200
    assert tokens_so_far < LONG, "the service answered only once the generation had finished"
    assert body["completion_tokens"] == LONG and body["finish_reason"] == "length"
    assert server.metric("troupe_generated_tokens_total") - tokens_before == LONG


def test_requests_that_arrive_together_are_generated_in_one_batch(server: Server) -> None:
    seeded = {"prompt": "7+8=", "max_new_tokens": 12, "seed": 7}
    alone = server.post("/generate", seeded).json()["response"]
    batches_of_3_or_4 = server.metric("troupe_batch_size_bucket", le="4.0") - server.metric("troupe_batch_size_bucket",
                                                                                          le="2.0")
    bodies = [seeded, {"prompt": "1+2=", "max_new_tokens": 5, "temperature": 0},
              {"prompt": "20-3=", "max_new_tokens": 9, "temperature": 0.5, "seed": 1},
              {"prompt": "4+4=", "max_new_tokens": 3, "top_k": 2}]
    with ThreadPoolExecutor(1 + len(bodies)) as pool:
        long = start_long_generation(server, pool)
        queued = [pool.submit(server.post, "/generate", body) for body in bodies]
        wait_for(lambda: server.metric("troupe_queue_depth") == len(bodies), 30, "four queued requests")
        responses = [future.result() for future in queued]
        assert long.result().status_code == 200
    assert [response.status_code for response in responses] == [200] * 4
    assert responses[0].json()["response"] == alone  # its seed, not its batch, decides its sample
    after = server.metric("troupe_batch_size_bucket", le="4.0") - server.metric("troupe_batch_size_bucket", le="2.0")
    assert after == batches_of_3_or_4 + 1


def test_a_full_queue_answers_503_with_retry_after_and_the_server_keeps_serving(server: Server) -> None:
    rejected = server.metric("troupe_requests_rejected_total")
    with ThreadPoolExecutor(1 + MAX_QUEUE) as pool:
        long = start_long_generation(server, pool)
        queued = [pool.submit(server.post, "/generate", {"prompt": "2+2=", "max_new_tokens": 4})
                  for _ in range(MAX_QUEUE)]
        wait_for(lambda: server.metric("troupe_queue_depth") == MAX_QUEUE, 30, "a full queue")
        refused = server.post("/generate", {"prompt": "3+3=", "max_new_tokens": 4})
        assert httpx.get(server.url + "/health").status_code == 200
        assert long.result().status_code == 200
        assert [future.result().status_code for future in queued] == [200] * MAX_QUEUE
    assert refused.status_code == 503
    assert int(refused.headers["retry-after"]) >= 1
    assert "at capacity" in refused.json()["error"]["message"]
    assert server.metric("troupe_requests_rejected_total") == rejected + 1
    assert server.metric("troupe_request_errors_total", endpoint="/generate", status="503") >= 1
    again = server.post("/generate", {"prompt": "3+3=", "max_new_tokens": 4})
    assert again.status_code == 200, again.text


def test_metrics_are_in_prometheus_text_format_with_every_serving_family(server: Server) -> None:
    server.post("/generate", {"prompt": "1+1=", "max_new_tokens": 2})
    text = httpx.get(server.url + "/metrics").text
    assert httpx.get(server.url + "/metrics").headers["content-type"].startswith("text/plain; version=")
    for family, kind in [("troupe_request_latency_seconds", "histogram"),
                         ("troupe_time_to_first_token_seconds", "histogram"),
                         ("troupe_batch_tokens_per_second", "histogram"), ("troupe_batch_size", "histogram"),
                         ("troupe_queue_depth", "gauge"), ("troupe_generated_tokens_total", "counter"),
                         ("troupe_request_errors_total", "counter")]:
        assert f"# TYPE {family} {kind}" in text
    assert re.search(r'^troupe_request_latency_seconds_bucket\{endpoint="/generate",le="\+Inf"\} [1-9]', text, re.MULTILINE)
    assert re.search(r'^troupe_time_to_first_token_seconds_count\{endpoint="/generate"\} [1-9]', text, re.MULTILINE)


def test_a_headless_loadtest_completes_with_no_failures_and_a_capacity_line(
        server: Server, arith: Path, tmp_path: Path) -> None:
    answered = server.metric("troupe_requests_total", endpoint="/generate", status="200")
    result = troupe("loadtest", server.url, "--users", "3", "--spawn-rate", "3", "--duration", "3s",
                    "--max-new-tokens", "4", "--prompt-file", str(arith / "train.jsonl"), "--slo-ms", "10000",
                    "--out", str(tmp_path / "loadtest"), timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert ", 0 failed (0.0%)" in result.stdout
    for heading in ("throughput", "latency       p50", "capacity", "plan for"):
        assert heading in result.stdout
    out = tmp_path / "loadtest"
    for name in ("locust_stats.csv", "locust_stats_history.csv", "locust.json", "requests.jsonl", "summary.json"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["requests"] > 0 and summary["failures"] == 0 and summary["tokens_per_s"] > 0
    assert summary["planning_requests_per_s"] == pytest.approx(0.8 * summary["capacity_requests_per_s"])
    assert server.metric("troupe_requests_total", endpoint="/generate", status="200") - answered == summary["requests"]


def test_loadtest_refuses_a_service_that_is_not_there(tmp_path: Path) -> None:
    result = troupe("loadtest", "http://127.0.0.1:9", "--duration", "1s", "--out", str(tmp_path / "none"))
    assert result.returncode == 2 and "cannot reach http://127.0.0.1:9" in result.stderr


def test_a_model_that_cannot_load_fails_ready_and_the_server_exits_1(arith: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((arith / "model" / "config.json").read_text())  # no weights, no tokenizer
    result = subprocess.run([TROUPE, "serve", str(broken), "--port", "0"], capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"could not load the model from {broken}" in result.stderr


def test_the_vllm_engine_is_refused_with_the_fix_where_vllm_is_missing(arith: Path) -> None:
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    result = troupe("serve", str(arith / "model"), "--engine", "vllm")
    assert result.returncode == 2 and "pip install 'troupe-rl[vllm]'" in result.stderr


def test_the_vllm_engine_serves_generate_and_streams(arith: Path, tmp_path: Path) -> None:
    pytest.importorskip("vllm", reason="vLLM is an optional extra")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("vLLM needs a GPU")
    log = tmp_path / "serve.log"
    with open(log, "wb") as output:
        process = subprocess.Popen([TROUPE, "serve", str(arith / "model"), "--port", "0", "--engine", "vllm",
                                    "--dtype", "float32"], stdout=output, stderr=subprocess.STDOUT)
    try:
        found = wait_for(lambda: re.search(r"on (http://127\.0\.0\.1:\d+) ", log.read_text()), 60, "the startup line")
        url = found.group(1)
        wait_for(lambda: httpx.get(url + "/ready", timeout=10).status_code == 200, 300, "GET /ready")
        body = httpx.post(url + "/generate", json={"prompt": "12+7=", "max_new_tokens": 6, "temperature": 0},
                          timeout=60).json()
        assert body["prompt_tokens"] == 5 and 1 <= body["completion_tokens"] <= 6
        stream = httpx.post(url + "/v1/completions", json={"prompt": "12+7=", "max_tokens": 6, "temperature": 0,
                                                           "stream": True}, timeout=60)
        events = events_of(stream)
        assert events[-1] == "[DONE]"
        assert "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1]) == body["response"]
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
