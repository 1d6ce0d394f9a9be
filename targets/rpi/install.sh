#!/bin/sh
# Installs an unpacked geomirror arm64 bundle on a Raspberry Pi (run as root from the bundle's
# folder, or by cloud-init's user-data that `geomirror flash` writes):
#   sh /opt/geomirror/install.sh --config cluster.yaml --site NAME [--key FILE --key-dest PATH] [--tls DIR]
# Creates the service user, installs the cluster file, the key (geomirror 0600 in a 0700 folder:
# a site refuses a key others can read) and, from --tls DIR, the cluster's ca.crt and this site's
# site-NAME.crt/.key beside the key (where the cluster file expects them by default), the systemd
# unit and the site's udev rules. It does not start the site: systemctl enable --now geomirror@NAME.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
config= site= key= keydest= tls=
while [ $# -gt 0 ]; do
  case "$1" in
    --config) config=$2; shift 2 ;;
    --site) site=$2; shift 2 ;;
    --key) key=$2; shift 2 ;;
    --key-dest) keydest=$2; shift 2 ;;
    --tls) tls=$2; shift 2 ;;
    *) echo "install.sh: unknown argument $1 (expected --config FILE --site NAME [--key FILE --key-dest PATH] [--tls DIR])" >&2; exit 2 ;;
  esac
done
[ -n "$config" ] && [ -n "$site" ] || { echo "install.sh: --config FILE and --site NAME are required" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "install.sh: run as root (sudo sh $0 ...)" >&2; exit 1; }
command -v node >/dev/null 2>&1 || { echo "install.sh: node is not installed; apt-get install nodejs (Node 20 or later)" >&2; exit 1; }
major=$(node -p 'process.versions.node.split(".")[0]')
[ "$major" -ge 20 ] || { echo "install.sh: node $(node --version) is too old; geomirror needs Node 20 or later" >&2; exit 1; }

getent group plugdev >/dev/null || groupadd --system plugdev
getent group dialout >/dev/null || groupadd --system dialout
id -u geomirror >/dev/null 2>&1 || useradd --system --home-dir /var/lib/geomirror --no-create-home --shell /usr/sbin/nologin --user-group geomirror
usermod -a -G plugdev,dialout geomirror

install -d -m 0750 -o root -g geomirror /etc/geomirror
install -m 0640 -o root -g geomirror "$config" /etc/geomirror/cluster.yaml
if [ -n "$key" ]; then
  install -d -m 0700 -o geomirror -g geomirror "$(dirname "$keydest")"
  install -m 0600 -o geomirror -g geomirror "$key" "$keydest"
  if [ -n "$tls" ]; then
    install -m 0644 -o geomirror -g geomirror "$tls/ca.crt" "$(dirname "$keydest")/ca.crt"
    install -m 0644 -o geomirror -g geomirror "$tls/site-$site.crt" "$(dirname "$keydest")/site-$site.crt"
    install -m 0600 -o geomirror -g geomirror "$tls/site-$site.key" "$(dirname "$keydest")/site-$site.key"
  fi
fi

install -m 0644 "$here/systemd/geomirror@.service" /etc/systemd/system/geomirror@.service
node "$here/lib/targets/rpi/udev-rules.js" /etc/geomirror/cluster.yaml "$site" > /etc/udev/rules.d/60-geomirror.rules.new
mv /etc/udev/rules.d/60-geomirror.rules.new /etc/udev/rules.d/60-geomirror.rules
ln -sf "$here/bin/geomirror" /usr/local/bin/geomirror
udevadm control --reload-rules
udevadm trigger --subsystem-match=usb --subsystem-match=tty --action=change
systemctl daemon-reload
echo "geomirror installed for site $site; start it with: systemctl enable --now geomirror@$site.service"
