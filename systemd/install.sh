#!/usr/bin/env bash
# Install Continuon Brain as a systemd service on a Raspberry Pi (Pi OS Bookworm).
# This is what `make install-service` runs, as root.
#
#   sudo systemd/install.sh [--dry-run] [--prefix DIR] [--extras LIST] [--no-start] [CONFIG]
#
# CONFIG     robot config to install as /etc/continuon/robot.yaml when that file
#            does not exist yet (default: configs/pi5-donkey.yaml).  An existing
#            robot.yaml is never overwritten: it holds the builder's calibration.
# --dry-run  print every command that would change the system, run none of them
#            (works without root).  Lines of the plan start with "+ ".
# --prefix DIR
#            install into the file-system tree DIR instead of / (the DESTDIR
#            environment variable does the same): files go under DIR, users and
#            groups are created in DIR/etc with `useradd --root DIR`, the unit is
#            enabled with `systemctl --root=DIR`, and no running service manager
#            is touched.  For tests and for preparing an SD-card image; note that
#            the venv's scripts point into DIR/opt/..., so for an image build
#            run this inside the image (chroot) rather than with --prefix.
# --extras LIST
#            the project's extras to install, comma-separated (default: pi;
#            e.g. pi,train for local fine-tuning).  See docs/install-pi.md.
# --no-start leave the service manager alone: no daemon-reload and no enable, so
#            nothing starts now or at boot (image builds, chroots, make pi-check).
#
# What it does, in order:
#   1. groups gpio, i2c, video (created if missing; Pi OS ships them) and the
#      system user `continuon` (no login shell, home /var/lib/continuon);
#   2. /opt/continuon/venv with --system-site-packages (picamera2 and libcamera
#      come from Debian: apt install python3-picamera2), and the project with
#      the `pi` extra installed into it;
#   3. /etc/continuon/robot.yaml from CONFIG, only if absent (0640 root:continuon);
#   4. the unit in /etc/systemd/system, `systemd-analyze verify`,
#      `systemctl daemon-reload`, `systemctl enable continuon-brain`.
# It does not start the service: calibrate first (continuon hw-check).
set -euo pipefail

readonly SERVICE=continuon-brain.service
readonly SERVICE_USER=continuon
readonly SERVICE_GROUPS=(gpio i2c video)
readonly HOME_DIR=/var/lib/continuon
readonly VENV=/opt/continuon/venv
readonly CONFIG_DIR=/etc/continuon
readonly CONFIG_DST=$CONFIG_DIR/robot.yaml
readonly UNIT_DIR=/etc/systemd/system

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd -- "$SCRIPT_DIR/.." && pwd)
PYTHON=${PYTHON:-python3}

usage() {
    sed -n '2,/^# What it does/{/^# What it does/d;s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}"
}

die() {
    echo "install.sh: error: $*" >&2
    exit 1
}

note() {
    echo "==> $*"
}

DRY_RUN=0
NO_START=0
EXTRAS=pi
PREFIX=${DESTDIR:-}
CONFIG_SRC=""
while (($#)); do
    case $1 in
        --dry-run) DRY_RUN=1 ;;
        --no-start) NO_START=1 ;;
        --extras)
            (($# >= 2)) || die "--extras needs a comma-separated list (e.g. pi,train)"
            EXTRAS=$2
            shift
            ;;
        --extras=*) EXTRAS=${1#--extras=} ;;
        --prefix)
            (($# >= 2)) || die "--prefix needs a directory"
            PREFIX=$2
            shift
            ;;
        --prefix=*) PREFIX=${1#--prefix=} ;;
        -h | --help)
            usage
            exit 0
            ;;
        -*) die "unknown option: $1 (see --help)" ;;
        *)
            [[ -z $CONFIG_SRC ]] || die "only one CONFIG may be given"
            CONFIG_SRC=$1
            ;;
    esac
    shift
done

if ((!DRY_RUN)) && ((EUID != 0)); then
    die "must run as root: it creates a system user and writes to /opt, /etc and
systemd's configuration.  Run: sudo make install-service
(or: systemd/install.sh --dry-run  to only print what it would do)"
fi

# Extras are names from pyproject.toml, never a path or a pip option.
[[ $EXTRAS =~ ^[a-z0-9]+([,_-][a-z0-9]+)*$ ]] ||
    die "--extras: expected comma-separated extra names such as pi,train, got: $EXTRAS"

# Normalise the prefix: "" means the live system, otherwise an absolute path
# without a trailing slash.
# (realpath -m: the directory need not exist, and a dry run must not create it.)
if [[ -n $PREFIX ]]; then
    PREFIX=$(realpath -m -- "$PREFIX")
    [[ $PREFIX != / ]] || PREFIX=""
fi

CONFIG_SRC=${CONFIG_SRC:-$REPO/configs/pi5-donkey.yaml}
[[ -f $CONFIG_SRC ]] || die "config not found: $CONFIG_SRC"
CONFIG_SRC=$(cd -- "$(dirname -- "$CONFIG_SRC")" && pwd)/$(basename -- "$CONFIG_SRC")
[[ -f $REPO/systemd/$SERVICE ]] || die "unit file not found: $REPO/systemd/$SERVICE"

# Run a command, or in dry-run mode print it (shell-quoted) after "+ ".
run() {
    if ((DRY_RUN)); then
        printf '+'
        printf ' %q' "$@"
        printf '\n'
    else
        "$@"
    fi
}

# Options that point user/group tools and systemctl at the prefix.
ROOT_OPT=()
SYSTEMCTL_ROOT=()
if [[ -n $PREFIX ]]; then
    ROOT_OPT=(--root "$PREFIX")
    SYSTEMCTL_ROOT=(--root="$PREFIX")
fi

group_exists() {
    if [[ -n $PREFIX ]]; then
        grep -q "^$1:" "$PREFIX/etc/group" 2>/dev/null
    else
        getent group "$1" >/dev/null
    fi
}

user_exists() {
    if [[ -n $PREFIX ]]; then
        grep -q "^$1:" "$PREFIX/etc/passwd" 2>/dev/null
    else
        getent passwd "$1" >/dev/null
    fi
}

# The group to give to chown: a name on the live system; in a prefix, the
# numeric id from DIR/etc/group (the host's names mean nothing there).
chown_group() {
    local gid=""
    if [[ -n $PREFIX ]]; then
        gid=$(awk -F: -v g="$1" '$1 == g { print $3 }' "$PREFIX/etc/group" 2>/dev/null || true)
    fi
    echo "${gid:-$1}"
}

if ((DRY_RUN)); then
    note "dry run: nothing is changed; the plan follows (lines starting with '+')"
fi
[[ -z $PREFIX ]] || note "installing into prefix $PREFIX"

# --- 0. prerequisites ----------------------------------------------------------
if ((!DRY_RUN)); then
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
        die "$PYTHON is older than 3.11 (Pi OS Bookworm ships 3.11)"
    "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null ||
        die "$PYTHON cannot create virtual environments: apt install python3-venv"
fi
if ! "$PYTHON" -c 'import picamera2' >/dev/null 2>&1; then
    note "warning: Debian's picamera2 is not installed; a Pi camera needs:" \
        "apt install python3-picamera2 (not needed for a RealSense-only robot)"
fi

# --- 1. groups and the service user ----------------------------------------------
note "groups ${SERVICE_GROUPS[*]} and system user $SERVICE_USER"
for group in "${SERVICE_GROUPS[@]}"; do
    if group_exists "$group"; then
        note "group $group exists"
    else
        run groupadd "${ROOT_OPT[@]}" --system "$group"
    fi
done
groups_csv=$(
    IFS=,
    echo "${SERVICE_GROUPS[*]}"
)
if user_exists "$SERVICE_USER"; then
    note "user $SERVICE_USER exists; making sure it is in $groups_csv"
    run usermod "${ROOT_OPT[@]}" --append --groups "$groups_csv" "$SERVICE_USER"
else
    # --no-create-home: systemd creates /var/lib/continuon (StateDirectory=) with
    # the right owner and mode when the service first starts.
    run useradd "${ROOT_OPT[@]}" --system --user-group \
        --home-dir "$HOME_DIR" --no-create-home \
        --shell /usr/sbin/nologin \
        --comment "Continuon Brain robot daemon" \
        --groups "$groups_csv" "$SERVICE_USER"
fi

# --- 2. virtual environment and the project ----------------------------------------
# --system-site-packages: picamera2/libcamera are Debian packages
# (python3-picamera2), not installable from PyPI on a Pi; the venv sees them, and
# pip treats them as already satisfying the `pi` extra's picamera2 requirement.
note "virtual environment $VENV and continuon-brain[$EXTRAS] from $REPO"
if [[ -x $PREFIX$VENV/bin/python ]]; then
    note "venv exists; upgrading the project in it"
else
    run "$PYTHON" -m venv --system-site-packages "$PREFIX$VENV"
fi
run "$PREFIX$VENV/bin/python" -m pip install --upgrade "$REPO[$EXTRAS]"

# --- 3. configuration (never overwrite a calibrated one) ----------------------------
note "configuration $CONFIG_DST"
run install -d -m 0755 "$PREFIX$CONFIG_DIR"
if [[ -e $PREFIX$CONFIG_DST ]]; then
    note "keeping the existing $PREFIX$CONFIG_DST (it holds your calibration);" \
        "to see what the shipped config changes: diff -u $PREFIX$CONFIG_DST $CONFIG_SRC"
else
    # 0640 root:continuon: the daemon reads it (it may hold MQTT credentials),
    # cannot change it, and other users cannot read it.
    run install -m 0640 "$CONFIG_SRC" "$PREFIX$CONFIG_DST"
    run chown "root:$(chown_group "$SERVICE_USER")" "$PREFIX$CONFIG_DST"
fi

# --- 4. the unit ------------------------------------------------------------------
note "unit $UNIT_DIR/$SERVICE"
run install -D -m 0644 "$REPO/systemd/$SERVICE" "$PREFIX$UNIT_DIR/$SERVICE"
if [[ -n $PREFIX ]]; then
    run systemd-analyze verify --root="$PREFIX" "$SERVICE"
    ((NO_START)) || note "no daemon-reload: no service manager runs $PREFIX"
else
    run systemd-analyze verify "$UNIT_DIR/$SERVICE"
    ((NO_START)) || run systemctl daemon-reload
fi
if ((NO_START)); then
    note "--no-start: the unit is installed but not enabled; to start it at boot:" \
        "systemctl daemon-reload && systemctl enable $SERVICE"
else
    run systemctl "${SYSTEMCTL_ROOT[@]}" enable "$SERVICE"
fi

if ((DRY_RUN)); then
    note "dry run finished: nothing was changed.  After a real run:"
elif ((NO_START)); then
    note "done: Continuon Brain is installed (not enabled: --no-start)."
else
    note "done: Continuon Brain is installed and enabled; it starts at the next boot."
fi
cat <<EOF
  Calibrate first (wheels off the ground):
    sudo -u $SERVICE_USER $VENV/bin/continuon hw-check --config $CONFIG_DST --move
  Start it now:        sudo systemctl start continuon-brain
  Restart (upgrade):   sudo systemctl restart continuon-brain
  Status:              systemctl status continuon-brain
  Follow the logs:     journalctl -u continuon-brain -f
  Logs as JSON fields: journalctl -u continuon-brain -o json-pretty
EOF
