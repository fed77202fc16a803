## ContainerStack (operations/docker/facts.py): Docker's and the toolkit's state as
## key=value lines. @PACKAGES@: a list of package names, each already quoted.
echo "active=$(systemctl is-active docker.service 2>/dev/null)"
echo "enabled=$(systemctl is-enabled docker.service 2>/dev/null)"
echo "server_version=$(docker version --format '{{.Server.Version}}' 2>/dev/null)"
echo "info=$(docker info --format '{{json .}}' 2>/dev/null)"
echo "docker_group=$(getent group docker | cut -d: -f4)"
if command -v dpkg-query >/dev/null; then
  dpkg-query -W -f='${db:Status-Abbrev} ${Package} ${Version}\n' @PACKAGES@ 2>/dev/null \
    | awk 'substr($1, 2, 1) == "i" { print "package=" $2 " " $3 }'
else
  rpm -q --qf 'package=%{NAME} %{VERSION}-%{RELEASE}\n' @PACKAGES@ 2>/dev/null | grep '^package='
fi
echo "ctk_version=$(nvidia-ctk --version 2>/dev/null | head -n 1)"
[ -f @UDEV_RULE@ ] && echo "udev_rule=yes"
[ -f @CDI_SPEC@ ] && echo "cdi_spec=yes"
true
