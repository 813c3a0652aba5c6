#!/bin/sh
# apt-get install PACKAGE..., as root or with passwordless sudo (the Makefile's `browser`
# and `media-reference` targets). Waits up to APT_LOCK_TIMEOUT_S (default 300) in all for
# another apt or dpkg to finish instead of giving up while the package manager is busy:
# DPkg::Lock::Timeout covers dpkg's locks, and `apt-get update`, which does not honour it
# for the package lists' lock, is retried while that lock is held. Each step gets only what
# is left of that time, so a busy machine holds `make test` for the bound at most.
set -eu
timeout=${APT_LOCK_TIMEOUT_S:-300}
command -v apt-get >/dev/null 2>&1 || { echo "apt-install: no apt-get on this machine" >&2; exit 1; }
sudo=
[ "$(id -u)" = 0 ] || sudo="sudo -n"
start=$(date +%s)
left() {
  l=$((timeout - ($(date +%s) - start)))
  if [ "$l" -gt 0 ]; then echo "$l"; else echo 0; fi
}
said=
while ! out=$($sudo apt-get -o DPkg::Lock::Timeout="$(left)" update -qq 2>&1); do
  case "$out" in
    *"Could not get lock"* | *"Unable to lock"*)
      if [ "$(left)" -eq 0 ]; then echo "$out" >&2; exit 1; fi
      [ -n "$said" ] || echo "apt-install: apt is busy; waiting up to ${timeout}s for its lock" >&2
      said=1
      nap=$(left)
      [ "$nap" -lt 5 ] || nap=5
      sleep "$nap"
      ;;
    *) echo "$out" >&2; exit 1 ;;
  esac
done
$sudo env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout="$(left)" install -y -qq "$@"
