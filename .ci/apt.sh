# Sourced by the .ci scripts: apt_install PACKAGE...: installs Debian packages (as root; a clear
# message and exit status 1 otherwise), progress on stderr so stdout stays the script's answer.
apt_install() {
  if [ "$(id -u)" != 0 ]; then
    echo "$* not installed and this is not root: apt-get install $*" >&2
    exit 1
  fi
  echo "installing $* (Debian packages)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq "$@" >&2
}
