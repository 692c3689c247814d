#!/bin/sh
# VIP mode of the lb image (docs/ha.md): keepalived holds a virtual IP on one of the LBs,
# configured by lbgen from membership. Installed as /usr/local/bin/lb-vip.
#
#   lb-vip entry [ARGS]   the image's entrypoint: without LB_VIP, `exec shoal agent ARGS`
#                         (one LB, no extra privilege). With LB_VIP, check it and the
#                         NET_ADMIN capability first (nothing is started if either is
#                         wrong), then run the agent with the VIP services file
#                         (/etc/shoal/services-vip.toml: + keepalived) and lbgen rendering
#                         keepalived's config (templates/keepalived.conf.hbs). The VIP
#                         never refuses a connection (no_refuse below).
#   lb-vip keepalived     the keepalived service: waits for lbgen's first config, then runs it;
#                         on the supervisor's SIGTERM no connection to the VIP completes here
#                         any more (no_handshake below)
#   lb-vip reload         lbgen's --render command: SIGHUP to keepalived, if it runs yet;
#                         once this LB is leaving (the file tracks shoal_leaving): as
#                         a backup, SIGTERM; as the master, nothing (it hands over at the end)
#   lb-vip check          keepalived's track script: HAProxy and lbgen both run
#   lb-vip fifo FIFO      keepalived's notify FIFO reader: gossips each state change, in
#                         order, as the tag vrrp=master|backup|fault
#
# Env (entry): LB_VIP=ADDR/PREFIX (e.g. 172.28.0.200/24; unset or empty = VIP mode off),
# LB_VIP_INTERFACE (eth0), LB_VIP_ROUTER_ID (51, 1-255: one per VIP on a network),
# LB_VIP_ADVERT (0.2 seconds between adverts: failover after ~3 of them), LB_VIP_SETTLE (3:
# seconds keepalived waits after its first config, so the other LBs have added this one
# as a peer before it listens for their adverts).
set -eu

CONF=/etc/keepalived/keepalived.conf
PIDDIR=/run/keepalived
STATE=/run/keepalived/state # the last state the notify FIFO reported
SERVICES_VIP=/etc/shoal/services-vip.toml
TEMPLATE=/etc/lbgen/keepalived.conf.hbs

die() {
  echo "lb-vip: $*" >&2
  exit 1
}

# Bit N of the effective capability set (/proc/self/status, CapEff in hex).
has_cap() {
  eff=$(sed -n 's/^CapEff:[[:space:]]*//p' /proc/self/status)
  [ -n "$eff" ] || return 1
  [ $(( (0x$eff >> $1) & 1 )) -eq 1 ]
}

entry() {
  if [ -z "${LB_VIP:-}" ]; then
    exec shoal agent "$@"
  fi
  iface="${LB_VIP_INTERFACE:-eth0}"
  router_id="${LB_VIP_ROUTER_ID:-51}"
  advert="${LB_VIP_ADVERT:-0.2}"
  echo "$LB_VIP" | grep -Eq '^([0-9]{1,3}\.){3}[0-9]{1,3}/[0-9]{1,2}$' \
    || die "LB_VIP=\"$LB_VIP\" is not ADDR/PREFIX (e.g. 172.28.0.200/24); unset it for an LB without a VIP"
  echo "$router_id" | grep -Eq '^[0-9]{1,3}$' && [ "$router_id" -ge 1 ] && [ "$router_id" -le 255 ] \
    || die "LB_VIP_ROUTER_ID=\"$router_id\" is not 1-255"
  echo "$advert" | grep -Eq '^[0-9]+(\.[0-9]+)?$' \
    || die "LB_VIP_ADVERT=\"$advert\" is not a number of seconds (e.g. 0.2)"
  # CAP_NET_ADMIN = 12 (add the VIP to the interface), CAP_NET_RAW = 13 (VRRP packets).
  has_cap 12 || die "LB_VIP is set but this container lacks the NET_ADMIN capability, which keepalived needs to add $LB_VIP to $iface: run it with --cap-add NET_ADMIN (compose: cap_add: [NET_ADMIN], as compose/ha.yml does), or unset LB_VIP for an LB without a VIP. Nothing was started."
  has_cap 13 || die "LB_VIP is set but this container lacks the NET_RAW capability (VRRP's raw socket): do not drop it (--cap-add NET_RAW). Nothing was started."
  [ -e "/sys/class/net/$iface" ] \
    || die "LB_VIP_INTERFACE=$iface: no such interface here (have: $(ls /sys/class/net | tr '\n' ' '))"
  [ -x "$(command -v keepalived)" ] || die "keepalived is not installed in this image"
  no_refuse "${LB_VIP%/*}" "$iface"
  export SHOAL_SERVICES="$SERVICES_VIP"
  export LBGEN_VAR="${LBGEN_VAR:+$LBGEN_VAR,}vrrp_vip=$LB_VIP,vrrp_interface=$iface,vrrp_router_id=$router_id,vrrp_advert_int=$advert,vrrp_script=/usr/local/bin/lb-vip"
  export LBGEN_RENDER="${LBGEN_RENDER:+$LBGEN_RENDER;}$TEMPLATE:$CONF:/usr/local/bin/lb-vip reload"
  echo "lb-vip: VIP mode: $LB_VIP on $iface (router id $router_id, adverts every ${advert}s)" >&2
  exec shoal agent "$@"
}

# The VIP never refuses a connection: a SYN to it that finds no listener (HAProxy dead,
# restarting, or the whole container SIGKILLed while Docker tears down its network
# namespace, which still holds the VIP) is dropped instead of answered with RST, so the
# client retransmits it (1 s later) to whichever LB holds the VIP by then, as when a host
# loses power; a refusal would fail the request at once. The kernel's answer to such a
# SYN is the only RST|ACK with sequence number 0 from the VIP (a reset of a connection
# carries its own sequence number and still goes out). tc, because a rule in this
# network namespace outlives every process of the container: an htb root whose
# unclassified packets go out directly, untouched, and one u32 filter sending those RSTs
# to a class whose queue holds nothing (pfifo limit 0). Offsets: IPv4 without options
# (the kernel's own RSTs), TCP flags at byte 33, sequence number at 24.
no_refuse() {
  vip="$1" dev="$2"
  tc qdisc del dev "$dev" root 2>/dev/null || true
  if err=$( (tc qdisc add dev "$dev" root handle 1: htb \
    && tc class add dev "$dev" parent 1: classid 1:1 htb rate 1mbit \
    && tc qdisc add dev "$dev" parent 1:1 handle 10: pfifo limit 0 \
    && tc filter add dev "$dev" parent 1: protocol ip prio 1 u32 \
      match ip src "$vip/32" match ip protocol 6 0xff \
      match u8 0x14 0x17 at 33 match u32 0 0xffffffff at 24 flowid 1:1) 2>&1); then
    echo "lb-vip: $vip never refuses a connection: the kernel's RST to a SYN without a listener is dropped on $dev (the client retries)" >&2
  else
    echo "lb-vip: warning: no tc rule keeping $vip from refusing connections while no HAProxy listens ($(echo "$err" | tr '\n' ' ')): a killed LB refuses connections until Docker removes its network" >&2
  fi
}

run_keepalived() {
  # lbgen renders the file from the first synced snapshot that lists this node.
  i=0
  while [ ! -s "$CONF" ]; do
    i=$((i + 1))
    [ "$i" -le 600 ] || die "no $CONF from lbgen after 60 s (see lbgen's log: --render)"
    sleep 0.1
  done
  sleep "${LB_VIP_SETTLE:-3}"
  mkdir -p "$PIDDIR"
  no_handshake off
  # Not exec'd: the supervisor's SIGTERM (to the whole process group, keepalived included)
  # means this LB stops, and from then on no connection to the VIP completes here.
  keepalived --dont-fork --log-console --vrrp --use-file "$CONF" \
    --pid "$PIDDIR/keepalived.pid" --vrrp_pid "$PIDDIR/vrrp.pid" &
  kpid=$!
  trap 'stopping=1' TERM
  stopping=
  st=0
  wait "$kpid" || st=$?
  if [ -n "$stopping" ]; then
    # keepalived got the same SIGTERM: it hands the VIP over now.
    no_handshake on
    kill -TERM "$kpid" 2>/dev/null || true
    st=0
    wait "$kpid" || st=$?
  fi
  exit "$st"
}

# While this LB stops (from the supervisor's SIGTERM, as keepalived's priority-0 advert
# hands the VIP over): no new connection to the VIP completes here. One whose handshake
# began here just before the new master's gratuitous ARP reached its client sent the rest
# of its packets to the new master, which knows no such connection and reset it (seen: a
# request reset 4 ms after its start, as the backup entered MASTER; 2-3 per docker stop of
# the master at load 11). So the VIP's SYN-ACKs go to the empty class of no_refuse: the
# client retransmits its SYN 1 s later, by then to the new master. Connections already
# open finish here (the VIP on lo) if their packets still come here.
# `no_handshake off` at keepalived's start removes a rule left by an earlier stop.
no_handshake() {
  dev="${LB_VIP_INTERFACE:-eth0}" vip="${LB_VIP%/*}"
  tc filter del dev "$dev" parent 1: protocol ip prio 2 2>/dev/null || true
  [ "$1" = on ] || return 0
  if err=$(tc filter add dev "$dev" parent 1: protocol ip prio 2 u32 \
    match ip src "$vip/32" match ip protocol 6 0xff \
    match u8 0x12 0x17 at 33 flowid 1:1 2>&1); then
    echo "lb-vip: this LB stops: no new connection to $vip completes here from now on (its SYN-ACKs are dropped; clients retry to the new master)" >&2
  else
    echo "lb-vip: warning: cannot drop $vip's SYN-ACKs while stopping ($(echo "$err" | tr '\n' ' ')): a connection begun here as the VIP moves may be reset by the new master" >&2
  fi
}

reload() {
  pid=$(cat "$PIDDIR/keepalived.pid" 2>/dev/null || true)
  leaving=
  grep -q '^track_file shoal_leaving' "$CONF" && leaving=1
  state=$(cat "$STATE" 2>/dev/null || true)
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && [ -n "$leaving" ] && [ "$state" = master ]; then
    # This LB is stopping (the template's local.leaving) and holds the VIP: no reload. It
    # keeps the VIP through the agent's drain and hands it over when the supervisor stops
    # keepalived (priority 0: the other LB takes it within its skew time). Stopped now,
    # its priority-0 advert coincides with the others' reload for this LB's leave and was
    # seen lost: the takeover then waited 3 adverts (3.5 s at keepalived's default 1 s).
    # The VIP also on lo (/32) until the container ends: when keepalived removes it from
    # the interface, the connections open here still receive their packets and can answer
    # (without it, a request whose data came in just after the removal was dropped, and
    # its retransmission, by then sent to the new master, reset). The kernel may still
    # answer an ARP request for the VIP here (arp_ignore 0) until the container ends, a
    # few seconds; clients ask only once their entry is stale, and the new master's
    # gratuitous ARP has just refreshed it.
    ip addr add "${LB_VIP%/*}/32" dev lo 2>/dev/null || true
    echo "lb-vip: this LB is stopping and holds the VIP: keepalived ($pid) hands it over when it stops (the VIP stays on lo for the open connections)"
  elif [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && [ -n "$leaving" ]; then
    # Stopping as a backup: keepalived goes now. Kept running until the drain ends, it
    # would take the VIP, as the others drop this LB from their peers and stop sending it
    # adverts. Started again meanwhile by the supervisor, the file puts it in FAULT.
    kill -TERM "$pid"
    echo "lb-vip: this LB is stopping as a ${state:-backup}: keepalived ($pid) stops now, so it never takes the VIP"
  elif [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -HUP "$pid"
    echo "lb-vip: keepalived ($pid) reloads $CONF"
  else
    echo "lb-vip: keepalived not running yet; it reads $CONF when it starts"
  fi
}

check() {
  pgrep -x haproxy >/dev/null && pgrep -x lbgen >/dev/null
}

# One line per change, in order: TYPE "NAME" STATE PRIORITY (INSTANCE "shoal" MASTER 150).
fifo() {
  f="${1:?lb-vip fifo FIFO}"
  while read -r type _name state _prio; do
    [ "$type" = INSTANCE ] || continue
    state=$(echo "$state" | tr 'A-Z' 'a-z')
    case "$state" in
      master | backup | fault) ;;
      *) continue ;; # stop: the agent is leaving the cluster anyway
    esac
    echo "$state" >"$STATE"
    # Retried briefly: the agent's API may be busy at start-up.
    for _ in 1 2 3 4 5; do
      shoal tags --set "vrrp=$state" >/dev/null 2>&1 && break
      sleep 0.2
    done || true
  done <"$f"
}

cmd="${1:-}"
[ $# -eq 0 ] || shift
case "$cmd" in
  entry) entry "$@" ;;
  keepalived) run_keepalived ;;
  reload) reload ;;
  check) check ;;
  fifo) fifo "$@" ;;
  *) die "usage: lb-vip entry|keepalived|reload|check|fifo" ;;
esac
