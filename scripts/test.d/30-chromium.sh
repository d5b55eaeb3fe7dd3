# Sourced by scripts/test.sh. Installs Debian's `chromium` (headless rendering of `hubsweep
# report` pages) when it is missing, and exports its path. Idempotent: a second run only checks
# that the binary is there. Needs root (CI runs as root) or passwordless sudo for apt-get.
#   HUBSWEEP_CHROMIUM  path of the chromium binary

if [ ! -x /usr/bin/chromium ]; then
  apt_get="apt-get"
  [ "$(id -u)" -eq 0 ] || apt_get="sudo apt-get"
  $apt_get update -qq
  DEBIAN_FRONTEND=noninteractive $apt_get install -y -qq --no-install-recommends \
    chromium fonts-dejavu-core >/dev/null
fi

export HUBSWEEP_CHROMIUM=/usr/bin/chromium
