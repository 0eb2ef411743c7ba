#!/usr/bin/env bash
# Install pyctr on this Debian 12 machine and start pyctrd with the default config.
#
#   ./install.sh               as root: packages, pyctr, config, start pyctrd
#   ./install.sh --no-start    the same without starting the daemon (CI, tests)
#   ./install.sh --cni         also write a CNI bridge config if /etc/cni/net.d has none
#                              (asked on a terminal; --no-cni never writes one)
#   ./install.sh --uninstall [--purge]
#                              remove what install.sh added (daemon stopped first);
#                              containers' data in /var/lib/pyctr only with --purge
#
# What goes where:
#   Debian packages (packages.list): runc and the tools the test suite drives
#     (docker-registry, skopeo, umoci, CNI plugins; qemu and mmdebstrap for the
#     guest lane in tests/vm/); --no-packages skips them.
#   pyctr itself: a venv of its own in $PYCTR_PREFIX (/opt/pyctr), installed
#     from this checkout (not linked to it); pyctrd, pyctr and pyctr-shim linked
#     into $PYCTR_BIN_DIR (/usr/local/bin).
#   ./.venv: the checkout's development venv (editable, with test tools) that
#     the test command uses (--no-dev skips it).
#   /etc/pyctr/config.toml (defaults) if missing; with systemd running, the unit
#     /etc/systemd/system/pyctrd.service (KillMode=process: containers outlive
#     the daemon), enabled and started instead of a background pyctrd.
# Paths can be moved for tests: PYCTR_PREFIX, PYCTR_BIN_DIR, PYCTR_ETC_DIR,
# PYCTR_UNIT_DIR, PYCTR_CNI_DIR, PYCTR_DATA_DIR.
set -euo pipefail
cd "$(dirname "$0")"

prefix=${PYCTR_PREFIX:-/opt/pyctr}
bin_dir=${PYCTR_BIN_DIR:-/usr/local/bin}
etc_dir=${PYCTR_ETC_DIR:-/etc/pyctr}
unit_dir=${PYCTR_UNIT_DIR:-/etc/systemd/system}
cni_dir=${PYCTR_CNI_DIR:-/etc/cni/net.d}
data_dir=${PYCTR_DATA_DIR:-/var/lib/pyctr}
commands=(pyctrd pyctr pyctr-shim)
unit=$unit_dir/pyctrd.service
marker=$prefix/installed-by-pyctr  # what install.sh wrote, for --uninstall

# Note a file install.sh wrote (and its hash) for --uninstall.
record() { echo "file $(sha256sum < "$1" | cut -d' ' -f1) $1" >> "$marker"; }

start=1 packages=1 dev=1 cni=ask uninstall=0 purge=0
for arg in "$@"; do
    case $arg in
        --no-start) start=0 ;;
        --no-packages) packages=0 ;;
        --no-dev) dev=0 ;;
        --cni) cni=yes ;;
        --no-cni) cni=no ;;
        --uninstall) uninstall=1 ;;
        --purge) purge=1 ;;
        *) echo "install.sh: unknown option $arg (see the top of install.sh)" >&2; exit 2 ;;
    esac
done
if [[ $(id -u) != 0 ]]; then
    echo "install.sh: run as root (pyctrd mounts filesystems and runs runc)" >&2
    exit 1
fi
systemd=0
[[ -d /run/systemd/system ]] && command -v systemctl >/dev/null && systemd=1
# The unit is written only where systemd runs and for the real paths.
[[ $unit_dir == /etc/systemd/system ]] || systemd=0

if ((uninstall)); then
    if ((systemd)) && [[ -e $unit ]]; then
        echo "== stopping and removing pyctrd.service (containers keep running)"
        systemctl disable --now pyctrd.service >/dev/null 2>&1 || true
        rm -f "$unit"
        systemctl daemon-reload
    elif [[ -e $prefix/pyctrd.pid ]]; then
        pid=$(cat "$prefix/pyctrd.pid")
        # Only the pyctrd this script started, by its PID.
        if tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q "^$prefix/venv/bin/python"; then
            echo "== stopping pyctrd (pid $pid)"
            kill "$pid"
            for _ in $(seq 100); do [[ -e /proc/$pid ]] || break; sleep 0.1; done
        fi
    fi
    for cmd in "${commands[@]}"; do
        [[ $(readlink "$bin_dir/$cmd" 2>/dev/null) == "$prefix"/* ]] && rm -f "$bin_dir/$cmd"
    done
    if [[ -e $marker ]]; then
        # A file install.sh wrote goes only as it was written; edited, it stays.
        while read -r _ sum path; do
            [[ -e $path ]] || continue
            if [[ $(sha256sum < "$path" | cut -d' ' -f1) == "$sum" ]]; then
                rm -f "$path"
            else
                echo "== kept $path (changed since install.sh wrote it)"
            fi
        done < <(grep '^file ' "$marker")
    fi
    rm -rf "$prefix"
    if ((purge)); then
        echo "== removing $data_dir (images, snapshots, container records)"
        rm -rf "$data_dir"
    else
        echo "== kept $data_dir (images and containers); --purge removes it"
    fi
    echo "pyctr is uninstalled"
    exit 0
fi

if ((packages)); then
    # The host's lines of packages.list (the guest lane's image reads the same file).
    mapfile -t wanted < <(awk '!/^#/ && NF >= 2 && ($2 == "both" || $2 == "host") {print $1}' \
                          packages.list)
    missing=()
    for p in "${wanted[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if ((${#missing[@]})); then
        echo "== apt-get install ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
    # Debian starts the registry as a service on :5000; the tests run their own.
    if ((systemd)) && systemctl is-active -q docker-registry 2>/dev/null; then
        systemctl disable --now docker-registry >/dev/null 2>&1 || true
    fi
fi

echo "== pyctr into $prefix (a venv of its own)"
mkdir -p "$prefix"
[[ -x $prefix/venv/bin/python ]] || python3 -m venv "$prefix/venv"
"$prefix/venv/bin/python" -m pip install -q --upgrade pip >/dev/null
# A copy, not a link to this checkout: the install survives the clone's removal.
"$prefix/venv/bin/python" -m pip install -q --no-warn-script-location .
for cmd in "${commands[@]}"; do
    mkdir -p "$bin_dir"
    ln -sf "$prefix/venv/bin/$cmd" "$bin_dir/$cmd"
done
touch "$marker"

if ((dev)); then
    echo "== development venv in $(pwd)/.venv (for the tests)"
    [[ -x .venv/bin/python ]] || python3 -m venv .venv
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null
    .venv/bin/python -m pip install -q -e '.[test]'
fi

if [[ ! -e $etc_dir/config.toml ]]; then
    mkdir -p "$etc_dir"
    "$prefix/venv/bin/pyctrd" config default > "$etc_dir/config.toml"
    record "$etc_dir/config.toml"
    echo "== wrote $etc_dir/config.toml (defaults)"
fi

# Pods need a network: offer the example bridge where no CNI config exists.
if ! compgen -G "$cni_dir/*.conf*" >/dev/null; then
    if [[ $cni == ask ]]; then
        cni=no
        if [[ -t 0 && -t 1 ]]; then
            read -r -p "No CNI network config in $cni_dir. Write a bridge network (10.88.0.0/16)? [y/N] " answer
            [[ $answer == [yY]* ]] && cni=yes
        fi
    fi
    if [[ $cni == yes ]]; then
        mkdir -p "$cni_dir"
        cp examples/cni/10-pyctr-bridge.conflist "$cni_dir/"
        record "$cni_dir/10-pyctr-bridge.conflist"
        echo "== wrote $cni_dir/10-pyctr-bridge.conflist"
    else
        echo "== no CNI config in $cni_dir: pods get no network until one exists (./install.sh --cni writes one)"
    fi
fi

if ((systemd)); then
    sed "s|^ExecStart=.*|ExecStart=$bin_dir/pyctrd|" examples/systemd/pyctrd.service > "$unit"
    record "$unit"
    systemctl daemon-reload
    echo "== wrote $unit (KillMode=process)"
fi

((start)) || exit 0

if ((systemd)); then
    echo "== systemctl enable --now pyctrd"
    systemctl enable -q --now pyctrd.service
elif [[ -S /run/pyctr/pyctr.sock ]] && "$bin_dir/pyctr" version >/dev/null 2>&1; then
    echo "== pyctrd is already running"
else
    echo "== starting pyctrd (log: /var/log/pyctrd.log)"
    nohup "$bin_dir/pyctrd" >>/var/log/pyctrd.log 2>&1 </dev/null &
    echo $! > "$prefix/pyctrd.pid"
fi
for _ in $(seq 100); do
    [[ -S /run/pyctr/pyctr.sock ]] && break
    sleep 0.1
done
"$bin_dir/pyctr" version
echo
echo "pyctrd is serving on /run/pyctr/pyctr.sock. Try:  pyctr info"
