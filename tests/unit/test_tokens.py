"""Read tokens for browsers: minted per tenant, signed, expiring (services/gateway/tokens.py)."""

from __future__ import annotations

from services.gateway import tokens

KEYS = {"key-a-1": "alice", "key-a-2": "alice", "key-b": "bob", "key-dot": "team.video"}


def test_a_minted_token_verifies_to_its_tenant_until_it_expires():
    token, expires = tokens.mint(KEYS, "alice", now=1000)
    assert expires == 1000 + tokens.TOKEN_TTL_S
    assert tokens.verify(KEYS, token, now=1000) == "alice"
    assert tokens.verify(KEYS, token, now=expires) == "alice"
    assert tokens.verify(KEYS, token, now=expires + 1) is None
    assert "key-a" not in token


def test_tampering_another_tenant_or_garbage_fails():
    token, _ = tokens.mint(KEYS, "alice", now=1000)
    tenant, exp, sig = token.split(".")
    assert tokens.verify(KEYS, f"bob.{exp}.{sig}", now=1000) is None
    assert tokens.verify(KEYS, f"alice.{int(exp) + 3600}.{sig}", now=1000) is None
    flipped = sig[:-1] + ("A" if sig[-1] != "A" else "B")
    assert tokens.verify(KEYS, f"alice.{exp}.{flipped}", now=1000) is None
    for junk in ("", "x", "a.b.c", "alice..sig", "alice.-5.sig", "." * 600, None):
        assert tokens.verify(KEYS, junk, now=1000) is None
    assert tokens.verify(KEYS, "nobody.99999.sig", now=1000) is None


def test_tenant_names_with_dots_work():
    token, _ = tokens.mint(KEYS, "team.video", now=0)
    assert tokens.verify(KEYS, token, now=0) == "team.video"


def test_rotating_a_tenants_key_revokes_its_tokens_only():
    alice, _ = tokens.mint(KEYS, "alice", now=0)
    bob, _ = tokens.mint(KEYS, "bob", now=0)
    rotated = {**{k: t for k, t in KEYS.items() if k != "key-a-2"}, "key-a-3": "alice"}
    assert tokens.verify(rotated, alice, now=0) is None
    assert tokens.verify(rotated, bob, now=0) == "bob"


def test_every_replica_with_the_same_keys_agrees():
    token, _ = tokens.mint(dict(KEYS), "bob", now=0)
    assert tokens.verify(dict(reversed(list(KEYS.items()))), token, now=0) == "bob"
