# medic %preun ($1: 0 on erase, 1 on upgrade): on erase, stop and disable.
if [ "$1" -eq 0 ] && command -v systemctl >/dev/null 2>&1; then
    systemctl disable --now medic.service >/dev/null 2>&1 || :
fi
exit 0
