#!/usr/bin/env bash
# System packages the project uses offline: Debian's Fashion-MNIST (the demo's and the tests' real data).
# Installs only what is missing, and only as root; otherwise says how.
set -euo pipefail

FASHION=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
missing=()
[ -f "$FASHION" ] || missing+=(dataset-fashion-mnist)

[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    echo "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
else
    echo "missing Debian packages: ${missing[*]}" >&2
    echo "  install them with: sudo apt-get install ${missing[*]}" >&2
    echo "  or point data.root at a Fashion-MNIST folder / set data.download: true (needs internet)" >&2
    exit 1
fi
