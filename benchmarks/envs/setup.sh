#!/usr/bin/env bash
# Create the peers' virtual environments at the repo root. Idempotent: an env whose requirement files
# have not changed since its last successful setup (and that still imports) is left as it is.
#
#   benchmarks/envs/setup.sh [vision|spdl|ffcv|all]...     (default: all)
#
#   vision  .venv-vision  torch 2.14.1 + torchvision 0.29.1, webdataset, litdata, psutil, matplotlib,
#                         numpy, pillow, simplejpeg, lmdb, tqdm, scikit-image/-learn; fastload -e (no deps)
#   spdl    .venv-vision  + spdl 0.8.0, and Debian's libavdevice59 libavfilter8 (apt) for its decoding
#   ffcv    .venv-ffcv    torch 2.13.0 (CPU) + ffcv 1.0.2 built against Debian's libopencv-dev,
#                         libturbojpeg0-dev, pkg-config (apt); fastload -e (no deps)
#
# Environment: PYTHON (default python3.11, else python3) must be CPython 3.11: the torch wheels used
# here lie on this machine's disk for cp311 only. FORCE=1 reinstalls even when up to date.
# Needs root for apt-get (the targets that need system packages install them when missing).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"

log() { printf '[setup] %s\n' "$*" >&2; }

pip_q() {  # pip_q VENV ARGS... : pip install -q, without this machine's noise about empty local indexes
  local venv="$1"; shift
  "$venv/bin/python" -m pip install -q "$@" 2>&1 | { grep -v 'is ignored: it is neither a file nor a directory' || true; }
  return "${PIPESTATUS[0]}"
}

check_python() {
  local v
  v="$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
  if [[ "$v" != "3.11" ]]; then
    log "PYTHON=$PY is Python $v; these envs need 3.11 (torch wheels on disk are cp311)"; exit 1
  fi
}

APT_UPDATED=0
apt_ensure() {  # apt_ensure PKG... : install the Debian packages that are missing
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  log "apt-get install ${missing[*]}"
  local SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO="sudo"
  if ((APT_UPDATED == 0)); then $SUDO apt-get update -qq; APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
}

# venv_setup NAME CHECK_PY REQ_FILE... : create $REPO/NAME and pip-install the requirement files,
# constrained by NAME's lock file; skipped when the stamp (hash of the files) matches and CHECK_PY runs.
venv_setup() {
  local name="$1" check="$2"; shift 2
  local venv="$REPO/$name" lock="$HERE/${name#.venv-}.lock.txt" stamp key reqs=()
  local f
  for f in "$@"; do reqs+=(-r "$HERE/$f"); done
  key="$(cd "$HERE" && cat "$@" "$(basename "$lock")" | sha256sum | cut -c1-16)"
  stamp="$venv/.benchmarks-env"
  if [[ "${FORCE:-0}" != 1 && -f "$stamp" && "$(cat "$stamp")" == "$key" ]] \
      && "$venv/bin/python" -c "$check" >/dev/null 2>&1; then
    log "$name: up to date ($*)"; return 0
  fi
  [[ -x "$venv/bin/python" ]] || { log "$name: creating venv with $PY"; "$PY" -m venv "$venv"; }
  log "$name: pip install $* (constraints: $(basename "$lock"))"
  # A command-line -c replaces pip's configured constraint file (the machine's torch cap): the lock
  # files pin torch exactly, within that cap.
  pip_q "$venv" -c "$lock" "${reqs[@]}"
  log "$name: pip install --no-deps -e $REPO (fastload)"
  pip_q "$venv" --no-deps -e "$REPO"
  "$venv/bin/python" -c "$check"
  echo "$key" > "$stamp"
  log "$name: ready ($(du -sh "$venv" | cut -f1))"
}

VISION_CHECK='import torch, torchvision, webdataset, litdata, PIL, simplejpeg, lmdb, skimage, psutil, matplotlib'
SPDL_CHECK="$VISION_CHECK"'
import spdl.io, spdl.pipeline, numpy as np, io
from PIL import Image
b = io.BytesIO(); Image.new("RGB", (64, 48), (200, 10, 10)).save(b, format="JPEG")
a = spdl.io.to_numpy(spdl.io.load_image(b.getvalue()))
assert a.shape == (48, 64, 3), a.shape'
FFCV_CHECK='import torch, ffcv, numba, cv2, PIL
from ffcv.fields.decoders import RandomResizedCropRGBImageDecoder
from ffcv.transforms import RandomHorizontalFlip, ToTensor, ToTorchImage'

setup_vision() { venv_setup .venv-vision "$VISION_CHECK" vision.txt; }
setup_spdl() {
  apt_ensure libavdevice59 libavfilter8
  venv_setup .venv-vision "$SPDL_CHECK" vision.txt spdl.txt
}
setup_ffcv() {
  apt_ensure libopencv-dev libturbojpeg0-dev pkg-config g++
  venv_setup .venv-ffcv "$FFCV_CHECK" ffcv.txt
}

check_python
targets=("$@"); ((${#targets[@]})) || targets=(all)
for t in "${targets[@]}"; do
  case "$t" in
    vision) setup_vision ;;
    spdl) setup_spdl ;;
    ffcv) setup_ffcv ;;
    all) setup_spdl; setup_ffcv ;;
    *) log "unknown target '$t' (vision|spdl|ffcv|all)"; exit 2 ;;
  esac
done
