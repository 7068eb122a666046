# medic %postun ($1: 0 on erase, 1 on upgrade). Upgrade: restart on the new binary (mode,
# budgets, breakers and audit chain live in /var/lib/medic). Erase: /var/lib/medic is kept, the
# audit log is evidence; an edited /etc/medic/medic.toml is kept as medic.toml.rpmsave.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
if [ "$1" -ge 1 ]; then
    if [ -d /run/systemd/system ]; then
        systemctl try-restart medic.service >/dev/null 2>&1 || :
    fi
elif [ -d /var/lib/medic ]; then
    echo "medic: kept /var/lib/medic (the audit log is evidence; also mode, budgets, breakers, forwarder cursor): remove it by hand when it is no longer needed"
fi
exit 0
