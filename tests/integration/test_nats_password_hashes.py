"""The embedded server's generated config holds bcrypt hashes, never the NATS passwords.

`vidmesh up` writes nats.conf from `up.nats_config`; the services read their plain
passwords from `<data dir>/nats-users.json`. Against the real nats-server: the config has
no plain password, the server does not warn about plaintext passwords, a service user and
`admin` connect with their plain passwords, a wrong one is refused.
"""

from __future__ import annotations

import asyncio
import re
import subprocess

import bcrypt
import httpx
import nats
import pytest

from services import nats_auth, up
from shared import permissions
from shared.settings import Settings
from tests.conftest import free_ports, wait_for

# one user's entry: its name, then its password, a bcrypt hash in double quotes
USER_HASH = re.compile(r'^\s*user: "([^"]+)"\n\s*password: (.*)$', re.M)
BCRYPT = re.compile(r'"(\$2[ab]\$\d\d\$[./A-Za-z0-9]{53})"')


def generated_passwords(data_dir):
    """The plain passwords `vidmesh up` generates and keeps in <data dir>/nats-users.json."""
    return permissions.local_passwords(data_dir, nats_auth.users())


def test_the_generated_users_carry_bcrypt_hashes_of_the_passwords(tmp_path):
    passwords = generated_passwords(tmp_path)
    text = up.nats_config(tmp_path, 4222, 8222, passwords)
    for user, password in passwords.items():
        assert password not in text, f"{user}'s plain password is in nats.conf"
    entries = USER_HASH.findall(text)
    assert {user for user, _ in entries} == set(passwords) and len(entries) == text.count("password:")
    for user, value in entries:
        hashed = BCRYPT.fullmatch(value)
        assert hashed, f"{user}: {value} is not a double-quoted bcrypt hash"
        assert bcrypt.checkpw(passwords[user].encode(), hashed.group(1).encode()), user


async def connect(url: str, user: str, password: str):
    return await nats.connect(
        url,
        user=user,
        password=password,
        allow_reconnect=False,
        max_reconnect_attempts=0,
        connect_timeout=3,
        inbox_prefix=permissions.inbox_prefix(user),
    )


def test_nats_server_takes_the_hashes_without_a_plaintext_warning(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    passwords = generated_passwords(data_dir)
    port, monitor = free_ports(2)
    conf = data_dir / "nats.conf"
    conf.write_text(up.nats_config(data_dir, port, monitor, passwords))
    log = tmp_path / "nats-server.log"
    url = f"nats://127.0.0.1:{port}"
    with log.open("w") as out:
        proc = subprocess.Popen([up.nats_server_binary(), "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT)

    def healthy():
        if proc.poll() is not None:
            raise AssertionError(f"nats-server exited with {proc.returncode}:\n{log.read_text()}")
        try:
            return httpx.get(f"http://127.0.0.1:{monitor}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    async def clients():
        # as the services do: the plain password from <data dir>/nats-users.json
        settings = Settings.load({"VIDMESH_DATA_DIR": str(data_dir), "NATS_URL": url})
        for service in ("catalog", permissions.ADMIN):
            user, password = permissions.credentials(settings, service)
            assert (user, password) == (service, passwords[service])
            nc = await connect(url, user, password)
            await nc.flush(timeout=3)
            await nc.close()
        with pytest.raises(Exception, match="(?i)authorization"):
            await connect(url, "catalog", passwords["pipeline"])

    try:
        wait_for(healthy, 20, what="nats-server healthy")
        asyncio.run(clients())
    finally:
        proc.terminate()
        proc.wait(10)
    output = log.read_text()
    assert "Server is ready" in output, output  # the server's output was captured
    assert not [line for line in output.splitlines() if "Plaintext passwords" in line], output
