//! HAProxy's own view of each server, for the status page: `@1 show stat -1 4 -1` (servers
//! only, CSV) through the master socket. Parsing is pure; [`fetch`] is the one I/O call.

use std::collections::HashMap;
use std::time::Duration;

use serde::Serialize;

use crate::haproxy::Master;
use crate::Error;

/// One server as the running worker reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LiveServer {
    /// HAProxy's status column: `UP`, `DOWN`, `DRAIN`, `MAINT`, `no check`, `UP 1/3` ...
    pub status: String,
    /// The effective weight HAProxy uses.
    pub weight: String,
    /// The last health check's result (`L7OK`, `L4CON` ...), empty without checks.
    pub check: String,
}

/// (backend, server) → its live state.
pub type LiveStates = HashMap<(String, String), LiveServer>;

/// How long the page waits for HAProxy before it says "unknown".
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// Asks the current worker for every server's state.
pub async fn fetch(master: &Master) -> Result<LiveStates, Error> {
    let mut m = master.clone();
    m.io_timeout = TIMEOUT;
    parse_show_stat(&m.command("@1 show stat -1 4 -1").await?)
}

/// Parses `show stat` CSV (`# pxname,svname,...` header, then one row per proxy/server);
/// keeps the server rows. An answer without the header (an error message) is an error.
pub fn parse_show_stat(text: &str) -> Result<LiveStates, Error> {
    let mut lines = text.lines();
    let header = lines
        .by_ref()
        .find(|l| l.starts_with("# pxname,"))
        .ok_or_else(|| {
            Error::new(format!(
                "unexpected `show stat` answer: {:?}",
                text.chars().take(200).collect::<String>()
            ))
        })?;
    let cols: Vec<&str> = header.trim_start_matches("# ").split(',').collect();
    let col = |name: &str| cols.iter().position(|c| *c == name);
    let (Some(px), Some(sv), Some(status), Some(weight)) =
        (col("pxname"), col("svname"), col("status"), col("weight"))
    else {
        return Err(Error::new(
            "`show stat` header lacks pxname/svname/status/weight",
        ));
    };
    let check = col("check_status");
    let mut out = LiveStates::new();
    for line in lines {
        let f: Vec<&str> = line.split(',').collect();
        let Some(name) = f.get(sv) else { continue };
        if f.len() < cols.len().min(status + 1) || *name == "FRONTEND" || *name == "BACKEND" {
            continue;
        }
        let get = |i: Option<usize>| i.and_then(|i| f.get(i)).unwrap_or(&"").to_string();
        out.insert(
            (get(Some(px)), name.to_string()),
            LiveServer {
                status: get(Some(status)),
                weight: get(Some(weight)),
                check: get(check),
            },
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_stat_rows_become_server_states() {
        let t = "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,sid,throttle,lbtot,tracked,type,rate,rate_lim,rate_max,check_status,\n\
web,web-1,0,0,0,0,,0,0,0,,0,,0,0,0,0,UP,100,1,0,0,0,5,0,,1,3,1,,0,,2,0,,0,L7OK,\n\
web,web-2,0,0,0,0,,0,0,0,,0,,0,0,0,0,DRAIN,0,1,0,0,0,5,0,,1,3,2,,0,,2,0,,0,L7OK,\n\
\n";
        let s = parse_show_stat(t).unwrap();
        assert_eq!(s.len(), 2);
        let w1 = &s[&("web".to_string(), "web-1".to_string())];
        assert_eq!(
            (w1.status.as_str(), w1.weight.as_str(), w1.check.as_str()),
            ("UP", "100", "L7OK")
        );
        assert_eq!(s[&("web".to_string(), "web-2".to_string())].status, "DRAIN");
    }

    #[test]
    fn an_error_answer_is_an_error() {
        assert!(parse_show_stat("Unknown command.\n").is_err());
    }
}
