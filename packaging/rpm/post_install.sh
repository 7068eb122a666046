# medic %post ($1: 1 on install, 2 on upgrade). Install: enable and start, in dry-run; an
# upgrade restarts in %postun, after the old files are gone. systemctl enable works offline
# (rpm --root, an image build); start only where systemd runs.
mkdir -p /etc/medic/playbooks
if [ "$1" -eq 1 ] && command -v systemctl >/dev/null 2>&1; then
    systemctl enable medic.service >/dev/null 2>&1 || :
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload >/dev/null 2>&1 || :
        systemctl start medic.service >/dev/null 2>&1 || :
        echo "medic: started in dry-run (it records what it would do and changes nothing); see 'medic status'"
    fi
fi
exit 0
