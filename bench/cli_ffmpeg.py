"""Debian's ffmpeg CLI: the baseline the pipeline benchmark compares the mesh against.

The only thing `python -m bench` ever installs: when `ffmpeg` is missing and we are root,
`apt-get update` then `apt-get install -y ffmpeg`. Anything else (not root, no network,
apt failure) returns None, and the pipeline benchmark reports the mesh figure alone.
"""

from __future__ import annotations

import os
import shutil
import subprocess


def ensure_ffmpeg(say=print) -> str | None:
    found = shutil.which("ffmpeg")
    if found:
        return found
    if os.geteuid() != 0:
        say("[bold red]ffmpeg is missing and we are not root: cannot apt-get install it[/]")
        return None
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", "ffmpeg"]):
        say(f"[yellow]ffmpeg missing: running {' '.join(cmd)}[/]")
        try:
            done = subprocess.run(
                cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            say(f"[bold red]{' '.join(cmd)} failed: {exc}[/]")
            return None
        if done.returncode != 0:
            say(f"[bold red]{' '.join(cmd)} exited {done.returncode}:[/]\n" + done.stdout[-2000:])
            return None
    return shutil.which("ffmpeg")


if __name__ == "__main__":
    from rich.console import Console

    Console().print(ensure_ffmpeg(Console().print) or "[bold red]no ffmpeg[/]")
