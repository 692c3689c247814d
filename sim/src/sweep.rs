//! The sweep: every scenario over N and seeds, on worker threads, with a
//! progress line on stderr; results written as CSV.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::net::NetConfig;
use crate::scenario::{self, Params, Spread, Steady};
use crate::stats::percentile_of;

#[derive(Debug, Clone)]
pub struct SweepConfig {
    pub sizes: Vec<usize>,
    pub seeds: u64,
    pub gossip_ms: u64,
    pub net: NetConfig,
    /// Loss percentages for the steady-state (false failure) runs.
    pub losses: Vec<f64>,
    /// Sizes for the steady-state runs (default: `sizes`).
    pub loss_sizes: Vec<usize>,
    pub loss_window: Duration,
    /// Above this N only the 0% and 10% loss runs are made (time budget).
    pub full_loss_max_n: usize,
    /// Sizes for the partition runs.
    pub partition_sizes: Vec<usize>,
    pub partition_cut: Duration,
    pub jobs: usize,
    pub quiet: bool,
}

#[derive(Debug, Clone, Copy)]
enum Task {
    Lifecycle { n: usize, seed: u64 },
    Steady { n: usize, seed: u64, loss: f64 },
    Partition { n: usize, seed: u64 },
}

impl Task {
    /// Rough cost, to run the big ones first (better packing on few cores).
    fn cost(&self) -> usize {
        match *self {
            Task::Lifecycle { n, .. } => n * n * 10,
            Task::Steady { n, .. } => n * n * 22,
            Task::Partition { n, .. } => n * n * 120,
        }
    }
    fn label(&self) -> String {
        match *self {
            Task::Lifecycle { n, seed } => format!("lifecycle N={n} seed={seed}"),
            Task::Steady { n, seed, loss } => format!("steady N={n} loss={loss}% seed={seed}"),
            Task::Partition { n, seed } => format!("partition N={n} seed={seed}"),
        }
    }
}

enum TaskResult {
    Lifecycle(usize, u64, Vec<Spread>),
    Steady(usize, u64, f64, Steady),
    Partition(usize, u64, Option<f64>),
}

#[derive(Default)]
pub struct Results {
    pub lifecycle: Vec<(usize, u64, Vec<Spread>)>,
    pub steady: Vec<(usize, u64, f64, Steady)>,
    pub partition: Vec<(usize, u64, Option<f64>)>,
}

pub fn run(cfg: &SweepConfig) -> Results {
    let mut tasks = Vec::new();
    for &n in &cfg.sizes {
        for seed in 1..=cfg.seeds {
            tasks.push(Task::Lifecycle { n, seed });
        }
    }
    for &n in &cfg.loss_sizes {
        for &loss in &cfg.losses {
            if n > cfg.full_loss_max_n && loss != 0.0 && loss != 10.0 {
                continue;
            }
            tasks.push(Task::Steady { n, seed: 1, loss });
        }
    }
    for &n in &cfg.partition_sizes {
        tasks.push(Task::Partition { n, seed: 1 });
    }
    tasks.sort_by_key(|t| std::cmp::Reverse(t.cost()));
    let total = tasks.len();
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let out = Mutex::new(Vec::new());
    let started = Instant::now();
    let progress = |label: &str| {
        if cfg.quiet {
            return;
        }
        let d = done.load(Ordering::SeqCst);
        let width = 30;
        let filled = d * width / total.max(1);
        eprint!(
            "\r\x1b[K[{}{}] {d}/{total} {:>4}s  {label}",
            "#".repeat(filled),
            "-".repeat(width - filled),
            started.elapsed().as_secs()
        );
        let _ = std::io::stderr().flush();
    };
    std::thread::scope(|s| {
        for _ in 0..cfg.jobs.max(1) {
            s.spawn(|| loop {
                let k = next.fetch_add(1, Ordering::SeqCst);
                let Some(&task) = tasks.get(k) else { break };
                progress(&format!("running {}", task.label()));
                let mk = |n: usize, seed: u64, loss: f64| {
                    let mut p = Params::lan(n, seed, cfg.gossip_ms);
                    p.net = cfg.net;
                    p.net.loss = loss;
                    p
                };
                let r = match task {
                    Task::Lifecycle { n, seed } => TaskResult::Lifecycle(
                        n,
                        seed,
                        scenario::lifecycle(&mk(n, seed, cfg.net.loss)),
                    ),
                    Task::Steady { n, seed, loss } => TaskResult::Steady(
                        n,
                        seed,
                        loss,
                        scenario::steady(&mk(n, seed, loss / 100.0), cfg.loss_window),
                    ),
                    Task::Partition { n, seed } => TaskResult::Partition(
                        n,
                        seed,
                        scenario::partition(
                            &mk(n, seed, cfg.net.loss),
                            cfg.partition_cut,
                            Duration::from_secs(300),
                        ),
                    ),
                };
                out.lock().unwrap_or_else(|e| e.into_inner()).push(r);
                done.fetch_add(1, Ordering::SeqCst);
                progress(&format!("done {}", task.label()));
            });
        }
    });
    if !cfg.quiet {
        eprintln!();
    }
    let mut res = Results::default();
    for o in out.into_inner().unwrap_or_else(|e| e.into_inner()) {
        match o {
            TaskResult::Lifecycle(n, s, v) => res.lifecycle.push((n, s, v)),
            TaskResult::Steady(n, s, l, v) => res.steady.push((n, s, l, v)),
            TaskResult::Partition(n, s, v) => res.partition.push((n, s, v)),
        }
    }
    res.lifecycle.sort_by_key(|r| (r.0, r.1));
    res.steady
        .sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)).then(a.2.total_cmp(&b.2)));
    res.partition.sort_by_key(|r| (r.0, r.1));
    res
}

fn ms(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.1}")
    } else {
        String::new()
    }
}

/// `sim_spread.csv`: one row per (N, seed, phase).
pub fn spread_csv(res: &Results, gossip_ms: u64) -> String {
    let mut s = String::from(
        "n,seed,gossip_ms,phase,observers,missing,first_ms,p50_ms,p99_ms,p999_ms,all_ms,within_3s\n",
    );
    for (n, seed, spreads) in &res.lifecycle {
        for sp in spreads {
            let _ = writeln!(
                s,
                "{n},{seed},{gossip_ms},{},{},{},{},{},{},{},{},{:.5}",
                sp.phase,
                sp.observers,
                sp.missing(),
                ms(sp.first_ms()),
                ms(sp.quantile(0.5)),
                ms(sp.quantile(0.99)),
                ms(sp.quantile(0.999)),
                sp.all_ms().map(ms).unwrap_or_default(),
                sp.within(3000.0)
            );
        }
    }
    s
}

/// One summary row per (N, phase) over seeds.
pub struct Summary {
    pub n: usize,
    pub phase: &'static str,
    pub seeds: usize,
    /// Over seeds, of "time until every member knew".
    pub all_p50: f64,
    pub all_max: f64,
    /// Pooled over every observer of every seed.
    pub member_p50: f64,
    pub member_p99: f64,
    pub member_p999: f64,
    pub member_max: f64,
    pub within_3s: f64,
    pub missing: usize,
    /// Spread after the first member knew (dissemination), p99.9 pooled.
    pub after_first_p999: f64,
}

pub fn summarize(res: &Results) -> Vec<Summary> {
    let mut out = Vec::new();
    let mut sizes: Vec<usize> = res.lifecycle.iter().map(|r| r.0).collect();
    sizes.dedup();
    for n in sizes {
        for phase in ["join", "fail", "leave"] {
            let sps: Vec<&Spread> = res
                .lifecycle
                .iter()
                .filter(|r| r.0 == n)
                .flat_map(|r| r.2.iter().filter(|s| s.phase == phase))
                .collect();
            if sps.is_empty() {
                continue;
            }
            let alls: Vec<f64> = sps
                .iter()
                .map(|s| s.all_ms().unwrap_or(f64::INFINITY))
                .collect();
            let mut pooled: Vec<f64> = Vec::new();
            let mut after: Vec<f64> = Vec::new();
            let mut observers = 0;
            let mut missing = 0;
            for s in &sps {
                observers += s.observers;
                missing += s.missing();
                pooled.extend(s.delays_ms.iter().copied());
                pooled.extend(std::iter::repeat_n(f64::INFINITY, s.missing()));
                let f = s.first_ms();
                after.extend(s.delays_ms.iter().map(|d| d - f));
                after.extend(std::iter::repeat_n(f64::INFINITY, s.missing()));
            }
            pooled.sort_by(f64::total_cmp);
            after.sort_by(f64::total_cmp);
            let q = |v: &[f64], q: f64| crate::stats::percentile(v, q);
            let within =
                pooled.iter().filter(|&&d| d <= 3000.0).count() as f64 / observers.max(1) as f64;
            out.push(Summary {
                n,
                phase,
                seeds: sps.len(),
                all_p50: percentile_of(&alls, 0.5),
                all_max: alls.iter().copied().fold(0.0, f64::max),
                member_p50: q(&pooled, 0.5),
                member_p99: q(&pooled, 0.99),
                member_p999: q(&pooled, 0.999),
                member_max: q(&pooled, 1.0),
                within_3s: within,
                missing,
                after_first_p999: q(&after, 0.999),
            });
        }
    }
    out
}

pub fn summary_csv(sum: &[Summary], gossip_ms: u64) -> String {
    let mut s = String::from(
        "n,gossip_ms,phase,seeds,all_p50_ms,all_max_ms,member_p50_ms,member_p99_ms,member_p999_ms,member_max_ms,within_3s,missing,after_first_p999_ms\n",
    );
    for r in sum {
        let _ = writeln!(
            s,
            "{},{gossip_ms},{},{},{},{},{},{},{},{},{:.5},{},{}",
            r.n,
            r.phase,
            r.seeds,
            ms(r.all_p50),
            ms(r.all_max),
            ms(r.member_p50),
            ms(r.member_p99),
            ms(r.member_p999),
            ms(r.member_max),
            r.within_3s,
            r.missing,
            ms(r.after_first_p999),
        );
    }
    s
}

pub fn steady_csv(res: &Results, gossip_ms: u64) -> String {
    let mut s = String::from(
        "n,seed,gossip_ms,loss_pct,window_s,false_failed_events,false_failed_members,udp_msgs_per_member_s,udp_bytes_per_member_s,tcp_bytes_per_member_s,total_bytes_per_member_s\n",
    );
    for (n, seed, loss, st) in &res.steady {
        let _ = writeln!(
            s,
            "{n},{seed},{gossip_ms},{loss},{},{},{},{:.2},{:.1},{:.1},{:.1}",
            st.window_s,
            st.false_failed_events,
            st.false_failed_members,
            st.udp_msgs_per_member_s,
            st.udp_bytes_per_member_s,
            st.tcp_bytes_per_member_s,
            st.udp_bytes_per_member_s + st.tcp_bytes_per_member_s,
        );
    }
    s
}

pub fn partition_csv(res: &Results, gossip_ms: u64, cut: Duration) -> String {
    let mut s = String::from("n,seed,gossip_ms,cut_s,healed,one_view_after_heal_ms\n");
    for (n, seed, healed) in &res.partition {
        let _ = writeln!(
            s,
            "{n},{seed},{gossip_ms},{},{},{}",
            cut.as_secs(),
            healed.is_some(),
            healed.map(ms).unwrap_or_default()
        );
    }
    s
}

pub fn write(dir: &Path, name: &str, body: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join(name), body)
}
