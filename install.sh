#!/usr/bin/env bash
# Install pyctr on this Debian 12 machine and start pyctrd with the default config.
#
#   ./install.sh             as root: packages, venv, config, start pyctrd
#   ./install.sh --no-start  the same without starting the daemon (CI, tests)
#
# Debian packages (packages.list): runc and the tools the test suite drives
# (docker-registry, skopeo, umoci, CNI plugins; qemu and mmdebstrap for the
# guest lane in tests/vm/). Python packages go into ./.venv; the commands
# pyctrd, pyctr and pyctr-shim are linked into /usr/local/bin.
set -euo pipefail
cd "$(dirname "$0")"

start=1
[[ "${1:-}" == "--no-start" ]] && start=0
if [[ $(id -u) != 0 ]]; then
    echo "install.sh: run as root (pyctrd mounts filesystems and runs runc)" >&2
    exit 1
fi

# The host's lines of packages.list (the guest lane's image reads the same file).
mapfile -t packages < <(awk '!/^#/ && NF >= 2 && ($2 == "both" || $2 == "host") {print $1}' \
                        packages.list)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "== apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian starts the registry as a service on :5000; the tests run their own.
if command -v systemctl >/dev/null && systemctl is-active -q docker-registry 2>/dev/null; then
    systemctl disable --now docker-registry >/dev/null 2>&1 || true
fi

echo "== python venv in $(pwd)/.venv"
[[ -x .venv/bin/python ]] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]'
for cmd in pyctrd pyctr pyctr-shim; do
    ln -sf "$(pwd)/.venv/bin/$cmd" "/usr/local/bin/$cmd"
done

if [[ ! -e /etc/pyctr/config.toml ]]; then
    mkdir -p /etc/pyctr
    .venv/bin/pyctrd config default > /etc/pyctr/config.toml
    echo "== wrote /etc/pyctr/config.toml (defaults)"
fi

((start)) || exit 0

if [[ -S /run/pyctr/pyctr.sock ]] && pyctr version >/dev/null 2>&1; then
    echo "== pyctrd is already running"
else
    echo "== starting pyctrd (log: /var/log/pyctrd.log)"
    nohup /usr/local/bin/pyctrd >>/var/log/pyctrd.log 2>&1 </dev/null &
    for _ in $(seq 100); do
        [[ -S /run/pyctr/pyctr.sock ]] && break
        sleep 0.1
    done
fi
pyctr version
echo
echo "pyctrd is serving on /run/pyctr/pyctr.sock. Try:  pyctr info"
