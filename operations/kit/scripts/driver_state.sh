## DriverState (operations/driver/facts.py): the driver stack's state as key=value lines.
## @INSTALLED@, @DPKG@: shell fragments of operations/driver/facts.py (@INSTALLED@ sets
## $installed); @EL_GLOBS@, @UNITS@: lists of words, each already quoted.
# shellcheck disable=SC2154  # $installed is set by @INSTALLED@
@INSTALLED@
case "$installed" in [0-9]*.*) echo "nvml_version=$installed" ;; esac
[ -r /sys/module/nvidia/version ] && echo "module_loaded=$(cat /sys/module/nvidia/version)"
command -v modinfo >/dev/null && echo "module_on_disk=$(modinfo -F version nvidia 2>/dev/null)"
[ -d /sys/module/nouveau ] && echo "nouveau_loaded=yes"
grep -lsE '^[[:space:]]*blacklist[[:space:]]+nouveau' /etc/modprobe.d/*.conf \
  /usr/lib/modprobe.d/*.conf | sed 's/^/nouveau_blacklist=/'
if command -v dpkg-query >/dev/null; then
  @DPKG@
  apt-mark showhold 2>/dev/null | sed 's/^/held=/'
elif command -v rpm >/dev/null; then
  rpm -qa --qf 'package=%{NAME} %{VERSION}-%{RELEASE}\n' @EL_GLOBS@ \
    | grep -vE @NOT_DRIVER_PACKAGE@

  dnf -q versionlock list 2>/dev/null | sed -E 's/-([0-9]+:)?[^-]+-[^-]+$//; s/^/held=/'
fi
# shellcheck disable=SC2043  # @UNITS@ is a list of words once rendered
for unit in @UNITS@; do
  enabled=$(systemctl is-enabled "$unit" 2>/dev/null)
  active=$(systemctl is-active "$unit" 2>/dev/null)
  echo "unit=$unit ${enabled:-missing} ${active:-unknown}"
done
if command -v update-initramfs >/dev/null; then echo "initramfs=update-initramfs -u"
elif command -v dracut >/dev/null; then echo "initramfs=dracut -f"; fi
{ [ -e /var/run/reboot-required ] || { command -v needs-restarting >/dev/null \
  && ! needs-restarting -r >/dev/null 2>&1; }; } && echo "reboot_required=yes"
if [ -r /sys/module/nvidia/version ] && command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=@QUERY@ --format=csv,noheader 2>&1 | sed 's/^/gpu=/'
  echo "nvidia_smi_rc=$?"
fi
