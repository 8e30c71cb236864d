#!/usr/bin/env bash
# Debian packages the project uses, installed only when missing and only as root (otherwise it says how).
#   setup_system.sh demo   Fashion-MNIST (Debian's dataset-fashion-mnist): the demo's and the tests' real data
#   setup_system.sh test   the same, plus the optional tools of the cluster and browser tests (they skip without)
set -euo pipefail

as_root() { [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; }
apt_install() { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null; }

if [ "${1:-demo}" = test ]; then
    # sshd, rsync and netcat: `ray up` / `ray submit` against this machine (tests/test_cluster_e2e.py, which
    # starts its own sshd on 127.0.0.1); Chromium: tests/test_ui_browser.py. On a systemd host the package
    # would start a system SSH server on port 22, so there it is only named.
    tools=()
    [ -x /usr/sbin/sshd ] || [ -d /run/systemd/system ] || tools+=(openssh-server)
    command -v rsync >/dev/null || tools+=(rsync)
    command -v nc >/dev/null || tools+=(netcat-openbsd)
    [ -x /usr/bin/chromium ] || tools+=(chromium)
    if [ ${#tools[@]} -gt 0 ] && as_root; then
        echo "installing Debian packages for the cluster and browser tests: ${tools[*]}"
        apt_install "${tools[@]}" || echo "  could not install them; the tests that need them will skip" >&2
    elif [ ${#tools[@]} -gt 0 ]; then
        echo "optional: sudo apt-get install ${tools[*]} (the cluster and browser tests skip without them)" >&2
    fi
fi

[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && exit 0
if as_root; then
    echo "installing Debian package: dataset-fashion-mnist"
    apt_install dataset-fashion-mnist
else
    echo "missing Fashion-MNIST: sudo apt-get install dataset-fashion-mnist" >&2
    echo "  or point data.root at a Fashion-MNIST folder / set data.download: true (needs internet)" >&2
    exit 1
fi
