# Shared by ./bazelw and .ci/run (sourced, not run): install Debian/Ubuntu packages a fresh machine
# lacks. The caller defines `say MESSAGE` for progress lines. Linux-only by purpose (apt-get):
# callers ask is_debian_like first, and on macOS name the Homebrew command instead.

as_root() {
  if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi
}

is_debian_like() {
  [[ -r /etc/os-release ]] && grep -qiE '^(ID|ID_LIKE)=.*(debian|ubuntu)' /etc/os-release
}

apt_updated=0
apt_install() {
  if [[ $apt_updated -eq 0 ]]; then
    say "apt-get update"
    as_root apt-get update -qq
    apt_updated=1
  fi
  say "installing $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}
