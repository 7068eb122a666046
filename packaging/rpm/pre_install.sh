# medic %pre: the group for the control socket (config control.group), before the files land.
getent group medic >/dev/null || groupadd -r medic
exit 0
