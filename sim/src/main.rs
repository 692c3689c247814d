//! `shoal-sim`: flags only; the work is in the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use sim::net::NetConfig;
use sim::scenario::{self, Params};
use sim::sweep::{self, SweepConfig};

#[derive(Parser)]
#[command(
    name = "shoal-sim",
    about = "Deterministic simulator running real shoal membership cores on virtual time"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// Network and timing flags shared by `run` and `sweep`.
#[derive(clap::Args, Clone)]
struct NetArgs {
    /// Gossip interval in ms (the LAN profile's is 100; the target uses 200).
    #[arg(long, default_value = "200", value_parser = positive_ms)]
    gossip_interval: u64,
    /// One-way link latency in ms.
    #[arg(long, default_value = "0.5", value_parser = latency_ms)]
    latency_ms: f64,
    /// Extra uniform random delay per packet, in ms.
    #[arg(long, default_value = "0.5", value_parser = latency_ms)]
    jitter_ms: f64,
}

impl NetArgs {
    fn net(&self, loss_pct: f64) -> NetConfig {
        NetConfig {
            latency: Duration::from_secs_f64(self.latency_ms / 1000.0),
            jitter: Duration::from_secs_f64(self.jitter_ms / 1000.0),
            loss: loss_pct / 100.0,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum Scenario {
    /// Join, failure, leave: per-member delays.
    Lifecycle,
    /// Steady state under --loss: false failures and traffic.
    Steady,
    /// Two halves cut for --cut-secs, then healed.
    Partition,
    /// One user event (64 B) from one member: delays to the others.
    UserEvent,
}

#[derive(Subcommand)]
enum Cmd {
    /// One scenario, one seed; prints the figures.
    Run {
        #[arg(long, value_enum, default_value = "lifecycle")]
        scenario: Scenario,
        /// Members (2..=20000).
        #[arg(long, short, default_value = "100", value_parser = members)]
        n: usize,
        #[arg(long, default_value = "1")]
        seed: u64,
        /// UDP loss in percent (0 <= loss < 100).
        #[arg(long, default_value = "0", value_parser = loss_pct)]
        loss: f64,
        /// Steady-state window, seconds of virtual time.
        #[arg(long, default_value = "30", value_parser = positive_secs)]
        window_secs: u64,
        /// Steady state: virtual seconds before traffic is counted.
        #[arg(long, default_value = "2", value_parser = positive_secs)]
        warmup_secs: u64,
        #[arg(long, default_value = "60", value_parser = positive_secs)]
        cut_secs: u64,
        #[command(flatten)]
        net: NetArgs,
    },
    /// All scenarios over sizes and seeds; writes CSVs (and plots) to --out.
    Sweep {
        /// Cluster sizes, comma separated (each 2..=20000).
        #[arg(long, value_delimiter = ',', default_value = "10,50,100,500,1000", value_parser = members)]
        sizes: Vec<usize>,
        /// Seeds per size for join/fail/leave.
        #[arg(long, default_value = "3", value_parser = clap::value_parser!(u64).range(1..=100))]
        seeds: u64,
        /// Loss percentages for the false-failure runs.
        #[arg(long, value_delimiter = ',', default_value = "0,5,10,20", value_parser = loss_pct)]
        losses: Vec<f64>,
        /// Sizes for the loss runs (default: --sizes).
        #[arg(long, value_delimiter = ',', value_parser = members)]
        loss_sizes: Vec<usize>,
        /// Virtual seconds observed per loss run.
        #[arg(long, default_value = "20", value_parser = positive_secs)]
        loss_window_secs: u64,
        /// Above this N only the 0% and 10% loss runs are made.
        #[arg(long, default_value = "500")]
        full_loss_max_n: usize,
        /// Sizes for the partition runs (empty: none).
        #[arg(long, value_delimiter = ',', default_value = "10,50,100,500", value_parser = members)]
        partition_sizes: Vec<usize>,
        #[arg(long, default_value = "60", value_parser = positive_secs)]
        cut_secs: u64,
        /// Skip the partition runs.
        #[arg(long)]
        no_partition: bool,
        /// Worker threads.
        #[arg(long, default_value = "2", value_parser = clap::value_parser!(u64).range(1..=64))]
        jobs: u64,
        #[arg(long, default_value = "bench/results")]
        out: PathBuf,
        /// File name prefix of the CSVs (plots read the default `sim_`).
        #[arg(long, default_value = "sim_")]
        prefix: String,
        /// Do not draw the PNG plots.
        #[arg(long)]
        no_plots: bool,
        /// TTF font for the plots' text.
        #[arg(long)]
        font: Option<PathBuf>,
        #[arg(long)]
        quiet: bool,
        #[command(flatten)]
        net: NetArgs,
    },
    /// Draws the PNG plots from the CSVs in --dir.
    Plot {
        #[arg(long, default_value = "bench/results")]
        dir: PathBuf,
        #[arg(long)]
        font: Option<PathBuf>,
    },
}

fn members(s: &str) -> Result<usize, String> {
    let n: usize = s
        .parse()
        .map_err(|_| format!("{s:?} is not a member count"))?;
    if !(2..=20_000).contains(&n) {
        return Err(format!(
            "N = {n} is out of range: a cluster needs 2..=20000 members"
        ));
    }
    Ok(n)
}

fn loss_pct(s: &str) -> Result<f64, String> {
    let x: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a percentage"))?;
    if !(0.0..100.0).contains(&x) {
        return Err(format!("loss {x}% is out of range: 0 <= loss < 100"));
    }
    Ok(x)
}

fn positive_ms(s: &str) -> Result<u64, String> {
    let x: u64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of ms"))?;
    if !(1..=60_000).contains(&x) {
        return Err(format!("{x} ms is out of range 1..=60000"));
    }
    Ok(x)
}

fn positive_secs(s: &str) -> Result<u64, String> {
    let x: u64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(1..=3600).contains(&x) {
        return Err(format!("{x} s is out of range 1..=3600"));
    }
    Ok(x)
}

fn latency_ms(s: &str) -> Result<f64, String> {
    let x: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of ms"))?;
    if !(0.0..=10_000.0).contains(&x) {
        return Err(format!("{x} ms is out of range 0..=10000"));
    }
    Ok(x)
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shoal-sim: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.cmd {
        Cmd::Run {
            scenario,
            n,
            seed,
            loss,
            window_secs,
            warmup_secs,
            cut_secs,
            net,
        } => {
            let mut p = Params::lan(n, seed, net.gossip_interval);
            p.net = net.net(loss);
            let started = Instant::now();
            match scenario {
                Scenario::Lifecycle => {
                    for s in scenario::lifecycle(&p) {
                        println!(
                            "{:<5} observers={} missing={} first={:.0}ms p50={:.0}ms p99={:.0}ms p99.9={:.0}ms all={} within3s={:.4}",
                            s.phase,
                            s.observers,
                            s.missing(),
                            s.first_ms(),
                            s.quantile(0.5),
                            s.quantile(0.99),
                            s.quantile(0.999),
                            s.all_ms().map_or("never".into(), |x| format!("{x:.0}ms")),
                            s.within(3000.0)
                        );
                    }
                }
                Scenario::Steady => {
                    let s = scenario::steady_after(
                        &p,
                        Duration::from_secs(warmup_secs),
                        Duration::from_secs(window_secs),
                    );
                    println!(
                        "loss={loss}% window={window_secs}s false_failed_events={} false_failed_members={} udp_msgs/member/s={:.2} udp_B/member/s={:.0} tcp_B/member/s={:.0}",
                        s.false_failed_events,
                        s.false_failed_members,
                        s.udp_msgs_per_member_s,
                        s.udp_bytes_per_member_s,
                        s.tcp_bytes_per_member_s
                    );
                }
                Scenario::UserEvent => {
                    let spreads = scenario::user_events(&p, 1, 64);
                    let s = &spreads[0];
                    println!(
                        "user event, N={}: p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms, all {} ms, \
                         within 1 s {:.2}%",
                        p.n,
                        s.quantile(0.5),
                        s.quantile(0.99),
                        s.quantile(0.999),
                        s.all_ms()
                            .map_or("never".to_string(), |x| format!("{x:.1}")),
                        100.0 * s.within(1000.0)
                    );
                }
                Scenario::Partition => {
                    let r = scenario::partition(
                        &p,
                        Duration::from_secs(cut_secs),
                        Duration::from_secs(300),
                    );
                    match r {
                        Some(ms) => println!("one view {ms:.0} ms after the heal"),
                        None => println!("not one view within 300 s of the heal"),
                    }
                }
            }
            eprintln!("(took {:.1}s)", started.elapsed().as_secs_f64());
            Ok(())
        }
        Cmd::Sweep {
            sizes,
            seeds,
            losses,
            loss_sizes,
            loss_window_secs,
            full_loss_max_n,
            partition_sizes,
            cut_secs,
            no_partition,
            jobs,
            out,
            prefix,
            no_plots,
            font,
            quiet,
            net,
        } => {
            let cfg = SweepConfig {
                loss_sizes: if loss_sizes.is_empty() {
                    sizes.clone()
                } else {
                    loss_sizes
                },
                sizes,
                seeds,
                gossip_ms: net.gossip_interval,
                net: net.net(0.0),
                losses,
                loss_window: Duration::from_secs(loss_window_secs),
                full_loss_max_n,
                partition_sizes: if no_partition {
                    Vec::new()
                } else {
                    partition_sizes
                },
                partition_cut: Duration::from_secs(cut_secs),
                jobs: jobs as usize,
                quiet,
            };
            let res = sweep::run(&cfg);
            let g = cfg.gossip_ms;
            let w = |name: &str, body: String| {
                sweep::write(&out, name, &body).map_err(|e| format!("{}: {e}", out.display()))
            };
            w(&format!("{prefix}spread.csv"), sweep::spread_csv(&res, g))?;
            w(
                &format!("{prefix}summary.csv"),
                sweep::summary_csv(&sweep::summarize(&res), g),
            )?;
            w(&format!("{prefix}steady.csv"), sweep::steady_csv(&res, g))?;
            w(
                &format!("{prefix}partition.csv"),
                sweep::partition_csv(&res, g, cfg.partition_cut),
            )?;
            print!("{}", sweep::summary_csv(&sweep::summarize(&res), g));
            if !no_plots {
                plot(&out, font.as_deref())?;
            }
            Ok(())
        }
        Cmd::Plot { dir, font } => plot(&dir, font.as_deref()),
    }
}

fn plot(dir: &std::path::Path, font: Option<&std::path::Path>) -> Result<(), String> {
    sim::plot::init_font(font)?;
    let (done, skipped) = sim::plot::all(dir);
    for p in done {
        eprintln!("wrote {}", p.display());
    }
    for s in skipped {
        eprintln!("skipped plot {s}");
    }
    Ok(())
}
