//! What the running HAProxy loaded, when lbgen starts next to an HAProxy it did not reload:
//! proven, or not taken (the first apply then reloads, as before).
//!
//! The lb image renders HAProxy's first config (`lbgen render --api --sync-wait`) before
//! HAProxy starts, then starts `lbgen watch`, whose first apply renders the same snapshot. A
//! reload there (~250 ms in a container: `haproxy -c` + new worker) only repeats what HAProxy
//! just did. lbgen takes the config file as what runs when all of these hold, and reloads
//! otherwise:
//!
//! 1. **Time.** The file's ctime (set by every write and by the rename of an atomic write, so
//!    an old file moved into place counts as new) is before the start of HAProxy's current
//!    worker, read from `/proc/PID/stat` (whose parent must be the master `show proc` names).
//!    The master forks a worker only after it parsed its config, so a file that has not
//!    changed since before that fork is the file the worker runs. The start is known to a
//!    clock tick (10 ms): its tick's beginning is the bound, so a write in the same tick as
//!    the fork counts as after it.
//! 2. **Servers.** `show servers state` of the worker lists exactly the servers of the file
//!    (backend, name, address, port, weight), none in maint or drain (a server-state file or
//!    a runtime command since the start would show there), and `show backend` exactly its
//!    `backend`/`listen` sections. This catches a file rewritten by another process at the
//!    moment HAProxy started, where the time alone could be fooled.
//! 3. **Nobody else wrote.** The [`crate::apply::Applier`] adopts only while it has not
//!    written the file itself: an HAProxy restarted under a running lbgen is reloaded.
//!
//! Any step that cannot be done (no `/proc`, another PID namespace, a server address that is
//! not IP:PORT in a custom template, an answer lbgen does not parse) means "not proven".

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::haproxy::{Master, ProcInfo};
use crate::layout::{Layout, ServerKey};
use crate::plan::Live;

/// The file at `out`, when it is proven to be what HAProxy's current worker runs: its text and
/// what runs. Err: why not (logged by the caller; the first apply reloads).
pub async fn what_runs(
    master: &Master,
    out: &Path,
    p: &ProcInfo,
) -> Result<(String, Live), String> {
    let worker = p
        .current_worker()
        .ok_or("no current worker in `show proc`")?;
    let before = std::fs::metadata(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let text = std::fs::read_to_string(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let after = std::fs::metadata(out).map_err(|e| format!("{}: {e}", out.display()))?;
    if (before.ino(), ctime(&before)) != (after.ino(), ctime(&after)) {
        return Err("the file changed while lbgen read it".into());
    }
    let started = worker_started(worker, p.master_pid)?;
    let changed = ctime(&after);
    if changed >= started {
        return Err(format!(
            "the file changed {:?} after HAProxy's worker {worker} started",
            changed.duration_since(started).unwrap_or_default()
        ));
    }
    let state = master
        .command("@1 show servers state")
        .await
        .map_err(|e| e.to_string())?;
    let backends = master
        .command("@1 show backend")
        .await
        .map_err(|e| e.to_string())?;
    same_servers(&text, &state, &backends)?;
    let live = Live::loaded(&text);
    Ok((text, live))
}

fn ctime(m: &std::fs::Metadata) -> SystemTime {
    let t = Duration::new(
        m.ctime().max(0) as u64,
        m.ctime_nsec().clamp(0, 999_999_999) as u32,
    );
    UNIX_EPOCH + t
}

/// When process `pid`, a child of `master`, started (the beginning of its clock tick), on the
/// wall clock that file times use.
fn worker_started(pid: u32, master: u32) -> Result<SystemTime, String> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    let (ppid, ticks) = parse_stat(&stat).ok_or_else(|| format!("{path}: unexpected format"))?;
    if ppid != master {
        return Err(format!(
            "{path}: its parent is {ppid}, not the master {master} (another PID namespace?)"
        ));
    }
    let hz = rustix::param::clock_ticks_per_second();
    if hz == 0 {
        return Err("clock ticks per second unknown".into());
    }
    let since_boot =
        Duration::from_secs(ticks / hz) + Duration::from_nanos((ticks % hz) * 1_000_000_000 / hz);
    // `starttime` counts from boot on CLOCK_BOOTTIME; file times are CLOCK_REALTIME.
    let ts = |c| {
        let t = rustix::time::clock_gettime(c);
        Duration::new(
            t.tv_sec.max(0) as u64,
            t.tv_nsec.clamp(0, 999_999_999) as u32,
        )
    };
    let boot_now = ts(rustix::time::ClockId::Boottime);
    let real_now = ts(rustix::time::ClockId::Realtime);
    let boot_at = real_now
        .checked_sub(boot_now)
        .ok_or("the wall clock is before boot")?;
    Ok(UNIX_EPOCH + boot_at + since_boot)
}

/// (ppid, starttime in clock ticks) of a `/proc/PID/stat` line (`man 5 proc`: fields 4 and
/// 22; the command name, field 2, is in parentheses and may hold spaces).
fn parse_stat(stat: &str) -> Option<(u32, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state).
    Some((f.get(1)?.parse().ok()?, f.get(19)?.parse().ok()?))
}

/// Whether `show servers state` and `show backend` answers describe exactly the servers and
/// backends of `text`; Err names the first difference.
fn same_servers(text: &str, state: &str, backends: &str) -> Result<(), String> {
    let layout = Layout::parse(text);
    let mut want: BTreeMap<ServerKey, (IpAddr, u16, u16)> = BTreeMap::new();
    for (key, line) in &layout.servers {
        let sa = line.socket_addr().ok_or_else(|| {
            format!(
                "server {}/{}: address {} is not IP:PORT",
                key.0, key.1, line.addr
            )
        })?;
        want.insert(key.clone(), (sa.ip(), sa.port(), line.weight));
    }
    let have = parse_servers_state(state)?;
    for (key, (ip, port, weight)) in &want {
        let id = format!("{}/{}", key.0, key.1);
        let s = have
            .get(key)
            .ok_or_else(|| format!("server {id} is in the file, not in HAProxy"))?;
        if (s.ip, s.port) != (*ip, *port) {
            return Err(format!(
                "server {id}: HAProxy has {}:{}, the file {ip}:{port}",
                s.ip, s.port
            ));
        }
        if s.admin != 0 {
            return Err(format!(
                "server {id}: admin state {} in HAProxy (maint or drain), none in the file",
                s.admin
            ));
        }
        if s.weight != *weight {
            return Err(format!(
                "server {id}: weight {} in HAProxy, {weight} in the file",
                s.weight
            ));
        }
    }
    if let Some((be, srv)) = have.keys().find(|k| !want.contains_key(*k)) {
        return Err(format!("server {be}/{srv} is in HAProxy, not in the file"));
    }
    let file: BTreeSet<&str> = text
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            match (w.next(), w.next()) {
                (Some("backend" | "listen"), Some(name)) => Some(name),
                _ => None,
            }
        })
        .collect();
    let running: BTreeSet<&str> = backends
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    if file != running {
        return Err(format!(
            "HAProxy's backends {running:?} are not the file's {file:?}"
        ));
    }
    Ok(())
}

struct StateRow {
    ip: IpAddr,
    port: u16,
    admin: u32,
    weight: u16,
}

/// A `show servers state` answer (format 1; columns found by name in its header).
fn parse_servers_state(out: &str) -> Result<BTreeMap<ServerKey, StateRow>, String> {
    let bad = |why: &str| format!("unexpected `show servers state` answer ({why})");
    let mut lines = out.lines();
    if lines.next() != Some("1") {
        return Err(bad("not format 1"));
    }
    let head: Vec<&str> = lines
        .next()
        .ok_or_else(|| bad("no header"))?
        .trim_start_matches('#')
        .split_whitespace()
        .collect();
    let col = |name: &str| {
        head.iter()
            .position(|c| *c == name)
            .ok_or_else(|| bad(&format!("no {name} column")))
    };
    let (be, name, addr, admin, weight, port) = (
        col("be_name")?,
        col("srv_name")?,
        col("srv_addr")?,
        col("srv_admin_state")?,
        col("srv_uweight")?,
        col("srv_port")?,
    );
    let mut rows = BTreeMap::new();
    for l in lines.filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = l.split_whitespace().collect();
        let get = |i: usize| f.get(i).copied().ok_or_else(|| bad("short row"));
        let row = StateRow {
            ip: get(addr)?.parse().map_err(|_| bad("address"))?,
            port: get(port)?.parse().map_err(|_| bad("port"))?,
            admin: get(admin)?.parse().map_err(|_| bad("admin state"))?,
            weight: get(weight)?.parse().map_err(|_| bad("weight"))?,
        };
        rows.insert((get(be)?.to_string(), get(name)?.to_string()), row);
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATE: &str = "1\n\
# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port\n\
3 web 1 a 127.0.0.1 0 0 0 0 1 8 2 0 6 0 0 0 - 1 - 0 0 - - 0\n\
3 web 2 b ::1 2 0 7 7 1 1 0 2 0 0 0 0 - 2 - 0 0 - - 0\n\n";
    const BACKENDS: &str = "# name\nweb\nstats\n\n";
    const TEXT: &str = "frontend f\n    default_backend web\nbackend web\n    server a 127.0.0.1:1 weight 0 check\n    server b [::1]:2 weight 7\nlisten stats\n    stats enable\n";

    #[test]
    fn haproxy_2_6_answers_matching_the_file_are_the_same_servers() {
        assert_eq!(same_servers(TEXT, STATE, BACKENDS), Ok(()));
    }

    #[test]
    fn any_difference_in_servers_or_backends_is_named() {
        let cases = [
            (
                TEXT.replace("weight 7", "weight 8"),
                STATE.to_string(),
                BACKENDS,
                "weight 7 in HAProxy",
            ),
            (
                TEXT.replace("[::1]:2", "[::1]:3"),
                STATE.to_string(),
                BACKENDS,
                "HAProxy has ::1:2",
            ),
            (
                TEXT.replace("    server b [::1]:2 weight 7\n", ""),
                STATE.to_string(),
                BACKENDS,
                "web/b is in HAProxy, not in the file",
            ),
            (
                format!("{TEXT}    server c 10.0.0.1:80\n"),
                STATE.to_string(),
                BACKENDS,
                "stats/c is in the file",
            ),
            (
                TEXT.to_string(),
                STATE.replace(" ::1 2 0 7", " ::1 2 8 7"),
                BACKENDS,
                "admin state 8",
            ),
            (
                format!("{TEXT}backend api\n"),
                STATE.to_string(),
                BACKENDS,
                "backends",
            ),
            (
                TEXT.replace("127.0.0.1:1", "app:1"),
                STATE.to_string(),
                BACKENDS,
                "not IP:PORT",
            ),
            (
                TEXT.to_string(),
                "Unknown command.\n".to_string(),
                BACKENDS,
                "not format 1",
            ),
        ];
        for (text, state, backends, want) in cases {
            let e = same_servers(&text, &state, backends).expect_err(want);
            assert!(e.contains(want), "{e} (wanted {want})");
        }
    }

    #[test]
    fn proc_stat_gives_parent_and_start_even_with_spaces_in_the_name() {
        let line = "4242 (hap roxy) S 4200 4200 1 0 -1 4194560 330 0 0 0 1 2 0 0 20 0 1 0 987654 12345 678 18446744073709551615\n";
        assert_eq!(parse_stat(line), Some((4200, 987654)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn this_process_started_before_now_and_after_boot() {
        let me = std::process::id();
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
        let (ppid, _) = parse_stat(&stat).unwrap();
        let started = worker_started(me, ppid).unwrap();
        let now = SystemTime::now();
        assert!(started <= now, "{started:?} after {now:?}");
        assert!(now.duration_since(started).unwrap() < Duration::from_secs(3600));
        assert!(worker_started(me, ppid + 1)
            .unwrap_err()
            .contains("not the master"));
    }
}
