//! A real headless Debian `chromium`, driven over the DevTools protocol on a pipe
//! (`--remote-debugging-pipe`: commands on the child's fd 3, answers on its fd 4, each
//! message a JSON object ended by a NUL byte). No port, no websocket, no extra crate: the
//! status-page tests open a page, read its DOM with `Runtime.evaluate`, and screenshot it.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Longest wait for one DevTools answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A running headless chromium; killed (with its profile dir removed) on drop.
pub struct Browser {
    child: Child,
    to_browser: std::io::PipeWriter,
    from_browser: Receiver<Value>,
    next_id: u64,
    _profile: tempfile::TempDir,
}

/// One tab, by its DevTools session.
pub struct Tab {
    session: String,
    /// Its target id (`Target.closeTarget`).
    pub target: String,
}

/// `fd` duplicated to a number of at least 10, close-on-exec (so the child's `dup2` onto
/// 3 and 4 never meets one of them already there).
fn high_fd(fd: &impl AsRawFd) -> OwnedFd {
    // SAFETY: F_DUPFD_CLOEXEC on a valid fd returns a new fd we then own, or -1.
    let n = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) };
    assert!(
        n >= 10,
        "fcntl(F_DUPFD_CLOEXEC): {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: `n` is a fresh fd nobody else owns.
    unsafe { OwnedFd::from_raw_fd(n) }
}

impl Browser {
    /// Starts `chromium --headless --no-sandbox --disable-gpu --remote-debugging-pipe`.
    pub fn start() -> Browser {
        use std::os::unix::process::CommandExt;
        let profile = tempfile::tempdir().expect("chromium profile dir");
        let (cmd_r, cmd_w) = std::io::pipe().expect("pipe");
        let (ans_r, ans_w) = std::io::pipe().expect("pipe");
        let (child_r, child_w) = (high_fd(&cmd_r), high_fd(&ans_w));
        drop((cmd_r, ans_w));
        let (r, w) = (child_r.as_raw_fd(), child_w.as_raw_fd());
        let mut cmd = Command::new("chromium");
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--remote-debugging-pipe",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--mute-audio",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank")
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        // SAFETY: only async-signal-safe calls (dup2) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(r, 3) < 0 || libc::dup2(w, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .expect("chromium must be installed (apt-get install chromium)");
        drop((child_r, child_w));
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(ans_r);
            loop {
                let mut msg = Vec::new();
                match reader.read_until(0, &mut msg) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                msg.pop_if(|b| *b == 0);
                let Ok(v) = serde_json::from_slice::<Value>(&msg) else {
                    continue;
                };
                if tx.send(v).is_err() {
                    return;
                }
            }
        });
        Browser {
            child,
            to_browser: cmd_w,
            from_browser: rx,
            next_id: 1,
            _profile: profile,
        }
    }

    /// One DevTools command (on a tab's session, or the browser's); its `result`.
    pub fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&msg).expect("encode");
        bytes.push(0);
        self.to_browser
            .write_all(&bytes)
            .expect("write to chromium's DevTools pipe");
        let deadline = Instant::now() + CALL_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.from_browser.recv_timeout(left) {
                Ok(v) if v["id"] == json!(id) => {
                    assert!(v.get("error").is_none(), "{method}: {}", v["error"]);
                    return v["result"].clone();
                }
                Ok(_) => {} // an event, or another call's late answer
                Err(RecvTimeoutError::Timeout) => panic!("chromium: no answer to {method}"),
                Err(RecvTimeoutError::Disconnected) => panic!("chromium exited during {method}"),
            }
        }
    }

    /// A new tab of `width`×`height` CSS pixels showing `url`.
    pub fn open(&mut self, url: &str, width: u32, height: u32) -> Tab {
        let t = self.call(None, "Target.createTarget", json!({"url": "about:blank"}));
        let target = t["targetId"].as_str().expect("targetId").to_string();
        let a = self.call(
            None,
            "Target.attachToTarget",
            json!({"targetId": target, "flatten": true}),
        );
        let tab = Tab {
            session: a["sessionId"].as_str().expect("sessionId").to_string(),
            target,
        };
        self.call(
            Some(&tab.session),
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}),
        );
        self.call(Some(&tab.session), "Page.enable", json!({}));
        self.call(Some(&tab.session), "Page.navigate", json!({"url": url}));
        tab
    }

    /// The value of a JS expression in the tab (promises awaited).
    pub fn eval(&mut self, tab: &Tab, expr: &str) -> Value {
        let r = self.call(
            Some(&tab.session),
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
        );
        assert!(
            r.get("exceptionDetails").is_none(),
            "{expr}: {}",
            r["exceptionDetails"]
        );
        r["result"]["value"].clone()
    }

    /// Polls `expr` until it is `true`, for at most `within`.
    pub fn wait_for(&mut self, tab: &Tab, expr: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if self.eval(tab, expr) == json!(true) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// CPU ticks (user + system) used so far by each live process of chromium's process
    /// group (the browser, renderers, GPU and utility processes), by PID.
    pub fn cpu_ticks(&self) -> std::collections::HashMap<u32, u64> {
        let pgid = self.child.id().to_string();
        let mut out = std::collections::HashMap::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // `pid (comm) state ppid pgrp ... utime stime`: fields after the last `)`.
            let Some((_, rest)) = stat.rsplit_once(')') else {
                continue;
            };
            let f: Vec<&str> = rest.split_whitespace().collect();
            if f.len() > 12 && f[2] == pgid {
                let t = f[11].parse::<u64>().unwrap_or(0) + f[12].parse::<u64>().unwrap_or(0);
                out.insert(pid, t);
            }
        }
        out
    }

    /// CPU time chromium used since `before` ([`Browser::cpu_ticks`]): the growth of each
    /// process alive now. Unlike wall time it hardly depends on what else the machine runs.
    pub fn cpu_since(&self, before: &std::collections::HashMap<u32, u64>) -> Duration {
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        let ticks: u64 = self
            .cpu_ticks()
            .iter()
            .map(|(pid, t)| t.saturating_sub(before.get(pid).copied().unwrap_or(0)))
            .sum();
        Duration::from_millis(ticks * 1000 / hz)
    }

    /// A PNG of the whole page (`captureBeyondViewport`) written to `path`.
    pub fn screenshot(&mut self, tab: &Tab, path: &Path) {
        use base64::Engine;
        let r = self.call(
            Some(&tab.session),
            "Page.captureScreenshot",
            json!({"format": "png", "captureBeyondViewport": true}),
        );
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().expect("screenshot data"))
            .expect("screenshot base64");
        std::fs::write(path, png).expect("write screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Its renderer and zygote processes share its process group.
        super::kill_group(self.child.id(), "KILL");
        let _ = self.child.wait();
    }
}
