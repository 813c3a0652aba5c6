"""Webhook secrets sealed with AES-GCM: round trip, binding to the record, rotation, tampering."""

from __future__ import annotations

import pytest

from services.notifier.sealing import Keyring, SealError, new_key, parse_key


def test_a_sealed_secret_opens_with_its_record_and_shows_nothing_of_the_secret():
    ring = Keyring([new_key()])
    sealed = ring.seal("whsec_abc123", "acme/wh_1")
    assert "whsec" not in sealed and "abc123" not in sealed
    assert ring.open(sealed, "acme/wh_1") == "whsec_abc123"
    assert ring.seal("whsec_abc123", "acme/wh_1") != sealed  # a fresh nonce every time


def test_a_sealed_secret_copied_to_another_record_does_not_open():
    ring = Keyring([new_key()])
    sealed = ring.seal("whsec_abc123", "acme/wh_1")
    with pytest.raises(SealError, match="does not open"):
        ring.open(sealed, "evil/wh_1")


def test_tampering_is_detected():
    ring = Keyring([new_key()])
    version, kid, nonce, body = ring.seal("whsec_abc123", "acme/wh_1").split(".")
    flipped = body[:-2] + ("A" if body[-2] != "A" else "B") + body[-1]
    for bad in (".".join((version, kid, nonce, flipped)), "v1.x", "plain-text", f"v2.{kid}.{nonce}.{body}"):
        with pytest.raises(SealError):
            ring.open(bad, "acme/wh_1")


def test_keys_rotate_the_first_seals_every_listed_key_opens():
    old, new = new_key(), new_key()
    sealed_before = Keyring([old]).seal("whsec_old", "t/wh")
    rotated = Keyring([new, old])
    assert rotated.open(sealed_before, "t/wh") == "whsec_old"
    sealed_after = rotated.seal("whsec_new", "t/wh")
    assert Keyring([new]).open(sealed_after, "t/wh") == "whsec_new"
    with pytest.raises(SealError, match="not in VIDMESH_WEBHOOK_KEYS"):
        Keyring([old]).open(sealed_after, "t/wh")


@pytest.mark.parametrize("bad", ["short", "!!!not-base64!!!", new_key()[:20]])
def test_a_malformed_key_is_refused_with_the_reason(bad):
    with pytest.raises(ValueError):
        parse_key(bad)
    with pytest.raises(ValueError):
        Keyring([bad])


def test_no_key_is_refused():
    with pytest.raises(ValueError):
        Keyring([])


async def test_the_notifier_refuses_to_start_without_a_valid_key():
    from services.notifier import service as notifier
    from services.notifier.settings import NotifierSettings
    from shared.settings import ConfigError

    for env in ({}, {"VIDMESH_WEBHOOK_KEYS": "too-short"}):

        class Bus:  # the start-up hook reads only the settings
            settings = NotifierSettings.load(env)

        with pytest.raises(ConfigError, match="VIDMESH_WEBHOOK_KEYS"):
            await notifier._check_keys(Bus())


def test_vidmesh_webhook_key_prints_a_fresh_valid_key():
    import subprocess
    import sys

    def run():
        return subprocess.run(
            [sys.executable, "-m", "services", "webhook-key"], capture_output=True, text=True, timeout=60
        )

    first, second = run(), run()
    assert first.returncode == 0, first.stderr
    assert len(parse_key(first.stdout.strip())) == 32 and first.stdout != second.stdout
