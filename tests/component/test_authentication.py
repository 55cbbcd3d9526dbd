"""Every connection to a run authenticates, on loopback too: without the run's secret
(or with another run's) a peer is refused at the handshake, none of its messages is
delivered, and the refusing actor logs it."""

from __future__ import annotations

import json
import os
import stat

import pytest

from runtime.client import Client
from runtime.errors import AuthenticationError
from runtime.security import SharedSecret, generate_secret
from runtime.settings import RuntimeSettings
from tests.component.actors import Echo
from tests.component.test_curve import raw_ping

ECHOER = "tests.component.actors:Echoer"


ASK_S = 30
"""Deadline of the asks here: they check what the answer is (or that a refusal is one), and a
loaded 2-core machine has held a handshake for over 5 s."""


@pytest.fixture
def secret_settings(tmp_path):
    generate_secret(tmp_path / "keys" / "secret")
    return RuntimeSettings(secret_file=str(tmp_path / "keys" / "secret"))


def test_a_generated_secret_is_readable_by_its_owner_only(tmp_path):
    secret = generate_secret(tmp_path / "keys" / "secret")
    assert stat.S_IMODE(os.stat(tmp_path / "keys" / "secret").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "keys").st_mode) == 0o700
    assert len(secret.token) >= 32
    assert generate_secret(tmp_path / "keys" / "secret") == secret  # kept when the run directory is used again


def test_a_secret_file_that_others_can_read_is_refused(tmp_path):
    generate_secret(tmp_path / "secret")
    os.chmod(tmp_path / "secret", 0o644)
    with pytest.raises(PermissionError, match="can be read by other users"):
        SharedSecret.load(tmp_path / "secret")


async def test_only_peers_with_the_runs_secret_are_served_on_loopback(spawn, tmp_path, secret_settings):
    echo = await spawn(ECHOER, "echo-0", settings=secret_settings)
    async with Client("member", settings=secret_settings) as client:
        assert (await client.ask(echo.endpoint, Echo("with the secret"), timeout=ASK_S)).value == "with the secret"

    assert not raw_ping(echo.endpoint), "a peer without credentials must not be answered"

    async with Client("outsider", settings=RuntimeSettings()) as client:
        with pytest.raises(AuthenticationError, match="refused the connection: the security handshake failed"):
            await client.ask(echo.endpoint, Echo("no secret"), timeout=ASK_S)

    generate_secret(tmp_path / "other" / "secret")
    other_run = RuntimeSettings(secret_file=str(tmp_path / "other" / "secret"))
    async with Client("other-run", settings=other_run) as client:
        with pytest.raises(AuthenticationError, match="authentication failed"):
            await client.ask(echo.endpoint, Echo("wrong secret"), timeout=ASK_S)

    async with Client("member", settings=secret_settings) as client:
        assert (await client.ask(echo.endpoint, Echo("still serving"), timeout=ASK_S)).value == "still serving"

    await echo.stop(timeout=10)
    lines = [json.loads(line) for line in (tmp_path / "logs" / "echo-0.jsonl").read_text().splitlines()]
    refused = [line for line in lines if line.get("event") == "security.refused"]
    assert refused, "the refused peers are logged"
    assert {"reason", "endpoint", "refused", "refused_total"} <= set(refused[0])
    assert refused[-1]["refused_total"] >= 2  # the raw peer, the outsider and the other run: each refused
