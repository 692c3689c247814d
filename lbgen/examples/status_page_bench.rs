//! Benchmark (run with `bench/status-page`): the `lbgen watch --http` status page with N
//! members (default 1,000) in a real headless chromium. Prints, over `--loads` page loads:
//! navigation → load event (server render, transfer, parse, layout), one live refresh with
//! JS (fetch `status.html` + swap + layout), and `GET /` as a client on 127.0.0.1 sees it.
//!
//! A 3-member page is measured first, as the baseline of a tab and a navigation.
//!
//! Flags: `--members N` (default 1000), `--loads N` (default 10).

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn line(label: &str, mut v: Vec<f64>) {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return;
    }
    println!(
        "{label:<52} n={n:<3} median {:>7.1} ms  p90 {:>7.1} ms  max {:>7.1} ms",
        v[n / 2],
        v[(n * 9 / 10).min(n - 1)],
        v[n - 1]
    );
}

fn main() {
    let members = arg("--members", 1000);
    let loads = arg("--loads", 10).max(1);
    // A 3-member page first: what a tab and a navigation cost in this chromium, apart from
    // the members.
    for n in [3, members] {
        let f = lbgen::testing::status_page::measure(n, loads);
        println!("status page with {n} members ({loads} loads, headless chromium):");
        line("page load (navigation start -> load event end)", f.load_ms);
        line(
            "chromium CPU time for one page load (all processes)",
            f.load_cpu_ms,
        );
        line("live refresh with JS (fetch + swap + layout)", f.refresh_ms);
        line(
            "GET / from 127.0.0.1 (server render + transfer)",
            f.server_ms,
        );
    }
}
