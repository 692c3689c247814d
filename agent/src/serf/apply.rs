//! A merged Serf config ([`super::config::SerfConfig`]) applied to the
//! agent's flags: a flag given on the command line or as a `SHOAL_*`
//! variable wins; list keys come before the flags' items (Serf appends the
//! command line's to the files').

use super::config::SerfConfig;
use crate::cli::{parse_duration, AgentArgs};
use crate::profile::Profile;

/// The CLI's global flags a config file may set.
pub struct Globals<'a> {
    pub api: &'a mut String,
    pub api_token: &'a mut Option<String>,
    pub log_level: &'a mut Option<String>,
}

/// Applies `cfg`; `explicit(id)` says whether the flag with clap id `id`
/// was given (command line or env).
pub fn apply(
    cfg: SerfConfig,
    args: &mut AgentArgs,
    globals: Globals<'_>,
    explicit: &dyn Fn(&str) -> bool,
) -> Result<(), String> {
    let set = |id: &str| !explicit(id);
    if let (Some(v), true) = (cfg.node_name, set("node")) {
        args.node = Some(v);
    }
    if let (Some(v), true) = (cfg.bind, set("bind")) {
        args.bind = v;
    }
    if let (Some(v), true) = (cfg.advertise, set("advertise")) {
        args.advertise = Some(v);
    }
    if let (Some(v), true) = (cfg.interface, set("iface")) {
        args.iface = Some(v);
    }
    if let (Some(v), true) = (cfg.tags_file, set("tags_file")) {
        args.tags_file = Some(v);
    }
    if let (Some(v), true) = (cfg.encrypt_key, set("encrypt")) {
        args.encrypt = Some(v);
    }
    if let (Some(v), true) = (cfg.keyring_file, set("keyring_file")) {
        args.keyring_file = Some(v);
    }
    if let (Some(v), true) = (cfg.profile, set("profile")) {
        use clap::ValueEnum;
        args.profile = Profile::from_str(&v, true)
            .map_err(|_| format!("config key \"profile\": {v:?} is not lan, local or wan"))?;
    }
    if let (Some(v), true) = (cfg.retry_interval, set("retry_interval")) {
        args.retry_interval =
            parse_duration(&v).map_err(|e| format!("config key \"retry_interval\": {e}"))?;
    }
    if let (Some(v), true) = (cfg.broadcast_timeout, set("leave_timeout")) {
        args.leave_timeout =
            parse_duration(&v).map_err(|e| format!("config key \"broadcast_timeout\": {e}"))?;
    }
    let reap = match (&cfg.reconnect_timeout, &cfg.tombstone_timeout) {
        (Some(a), Some(b)) if parse_duration(a) != parse_duration(b) => {
            return Err(format!(
                "config keys \"reconnect_timeout\" ({a}) and \"tombstone_timeout\" ({b}) differ: \
                 shoal reaps failed and left members after one --reap-after"
            ))
        }
        (Some(a), _) => Some(("reconnect_timeout", a)),
        (None, Some(b)) => Some(("tombstone_timeout", b)),
        (None, None) => None,
    };
    if let (Some((key, v)), true) = (reap, set("reap_after")) {
        args.reap_after = parse_duration(v).map_err(|e| format!("config key {key:?}: {e}"))?;
    }
    if let (Some(v), true) = (cfg.snapshot_path, set("snapshot")) {
        args.snapshot = Some(v);
    }
    if let (Some(v), true) = (cfg.rejoin_after_leave, set("rejoin")) {
        args.rejoin = v;
    }
    if let (Some(v), true) = (cfg.replay_on_join, set("replay")) {
        args.replay = v;
    }
    if let Some(v) = cfg.leave_on_terminate {
        args.leave_on_terminate = v;
    }
    if let Some(v) = cfg.skip_leave_on_interrupt {
        args.leave_on_interrupt = !v;
    }
    args.join = [cfg.join, std::mem::take(&mut args.join)].concat();
    args.event_handlers = [cfg.event_handlers, std::mem::take(&mut args.event_handlers)].concat();
    args.config_tags = cfg.tags;
    if let (Some(v), true) = (cfg.rpc_addr, set("api")) {
        *globals.api = v;
    }
    if let (Some(v), true) = (cfg.rpc_auth, set("api_token")) {
        *globals.api_token = Some(v);
    }
    if let (Some(v), true) = (cfg.log_level, set("log_level")) {
        *globals.log_level = Some(v);
    }
    Ok(())
}
