#!/bin/sh
# apt-get install PACKAGE..., as root or with passwordless sudo (the Makefile's `browser`
# target). Waits up to APT_LOCK_TIMEOUT_S (default 300) for another apt or dpkg to finish
# instead of giving up while the package manager is busy: DPkg::Lock::Timeout covers dpkg's
# locks, and `apt-get update`, which does not honour it for the package lists' lock, is
# retried while that lock is held.
set -eu
timeout=${APT_LOCK_TIMEOUT_S:-300}
command -v apt-get >/dev/null 2>&1 || { echo "apt-install: no apt-get on this machine" >&2; exit 1; }
sudo=
[ "$(id -u)" = 0 ] || sudo="sudo -n"
waited=0
while ! out=$($sudo apt-get -o DPkg::Lock::Timeout="$timeout" update -qq 2>&1); do
  case "$out" in
    *"Could not get lock"* | *"Unable to lock"*)
      if [ "$waited" -ge "$timeout" ]; then echo "$out" >&2; exit 1; fi
      [ "$waited" -gt 0 ] || echo "apt-install: apt is busy; waiting up to ${timeout}s for its lock" >&2
      sleep 5
      waited=$((waited + 5))
      ;;
    *) echo "$out" >&2; exit 1 ;;
  esac
done
$sudo env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout="$timeout" install -y -qq "$@"
