//! Rounds of a side-by-side benchmark: every arm (one tool or setting) runs once as a
//! discarded warm-up, then `rounds` times in the orders of a Williams design
//! ([`order`]: two arms run A-B, B-A, A-B, …; with more arms each one runs in every
//! position, and right after every other arm, equally often), with the host settled
//! before every phase ([`crate::host::settle`]: `sync`, page cache dropped). Each phase
//! is printed as it ends, with the load average; [`Results::print`] gives each metric's
//! median and its rounds. Writes nothing to disk.

use std::fmt;

use anyhow::{bail, ensure, Context, Result};

use crate::host;

/// Which pass of an arm is running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    /// Not counted.
    WarmUp,
    /// Counted round, 1-based.
    Round(usize),
}

impl fmt::Display for Pass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pass::WarmUp => f.write_str("warm-up"),
            Pass::Round(r) => write!(f, "round {r}"),
        }
    }
}

/// What one phase measured: named figures (e.g. `secs`, `tps`, `p99_ms`).
#[derive(Clone, Debug, Default)]
pub struct Sample {
    metrics: Vec<(String, f64)>,
}

impl Sample {
    pub fn new() -> Sample {
        Sample::default()
    }

    /// Adds the figure `name`.
    pub fn with(mut self, name: impl Into<String>, value: f64) -> Sample {
        self.metrics.push((name.into(), value));
        self
    }

    fn get(&self, name: &str) -> Option<f64> {
        self.metrics
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
    }
}

/// A figure with as many decimals as its size deserves.
fn figure(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

impl fmt::Display for Sample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (n, v)) in self.metrics.iter().enumerate() {
            if i > 0 {
                f.write_str("  ")?;
            }
            write!(f, "{n}={}", figure(*v))?;
        }
        Ok(())
    }
}

type RunFn<'a> = Box<dyn FnMut(Pass) -> Result<Sample> + 'a>;

/// One side of the comparison: a name and the phase that measures it.
pub struct Arm<'a> {
    name: String,
    run: RunFn<'a>,
}

impl<'a> Arm<'a> {
    pub fn new(name: impl Into<String>, run: impl FnMut(Pass) -> Result<Sample> + 'a) -> Arm<'a> {
        Arm {
            name: name.into(),
            run: Box::new(run),
        }
    }
}

/// The order of the arms in round `round` (0-based): a Williams design. Rotating one
/// order (round r starting with arm r mod n) puts every arm in every position, but
/// always after the same arm, so whatever a phase leaves behind (load, dirty pages,
/// autovacuum work) always falls on the same next arm. Here the base order is 0, 1,
/// n−1, 2, n−2, …, shifted by the round: over n rounds (n even) every arm runs in every
/// position once and right after every other arm once. For an odd n, rounds alternate
/// between that order and its reverse, which balances both over 2n rounds.
fn order(arms: usize, round: usize) -> Vec<usize> {
    let mut base: Vec<usize> = Vec::with_capacity(arms);
    let (mut low, mut high) = (0, arms);
    for i in 0..arms {
        if i % 2 == 0 {
            base.push(low);
            low += 1;
        } else {
            high -= 1;
            base.push(high);
        }
    }
    // base = 0, n-1, 1, n-2, ...; the Williams order 0, 1, n-1, 2, n-2, ... is its
    // negation modulo n.
    let williams = base.iter().map(|&b| (arms - b) % arms);
    let (shift, reverse) = if arms % 2 == 1 {
        (round / 2, round % 2 == 1)
    } else {
        (round, false)
    };
    let mut o: Vec<usize> = williams.map(|w| (w + shift) % arms).collect();
    if reverse {
        o.reverse();
    }
    o
}

/// The median of `v` (the mean of the middle two for an even count); NaN when empty.
pub fn median(v: &[f64]) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// `values` (one per round) split by how busy the host was in each round, `load` (one per
/// round, in the same order; higher is busier): the values of the rounds with the lower
/// half of `load`, then those with the upper half, each in increasing `load`. With an
/// odd count the middle round is in neither.
pub fn split_by_load(load: &[f64], values: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let mut by: Vec<(f64, f64)> = load.iter().copied().zip(values.iter().copied()).collect();
    by.sort_by(|a, b| a.0.total_cmp(&b.0));
    let half = by.len() / 2;
    let pick = |r: &[(f64, f64)]| r.iter().map(|x| x.1).collect::<Vec<_>>();
    (pick(&by[..half]), pick(&by[by.len() - half..]))
}

/// A distribution-free confidence interval for the median of `v`: its order
/// statistics `k` and `n + 1 - k` (1-based, sorted), with the largest `k` whose coverage
/// `1 - 2 P(Binomial(n, 1/2) < k)` is still at least 90 %. Returns `(low, high,
/// coverage)`, or `None` when even the full range covers less (fewer than 5 values).
pub fn median_interval(v: &[f64]) -> Option<(f64, f64, f64)> {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    // P(Binomial(n, 1/2) <= j) for j = 0, 1, ...
    let mut below = Vec::with_capacity(n + 1);
    let (mut c, mut sum) = (1.0f64, 0.0f64);
    let all = 2f64.powi(i32::try_from(n).ok()?);
    for j in 0..=n {
        sum += c;
        below.push(sum / all);
        c = c * (n - j) as f64 / (j + 1) as f64;
    }
    let mut best = None;
    for k in 1..=n.div_ceil(2) {
        let coverage = 1.0 - 2.0 * below[k - 1];
        if coverage < 0.90 {
            break;
        }
        best = Some((s[k - 1], s[n - k], coverage));
    }
    best
}

/// Which build a run used: path, size and modification time (seconds since the epoch),
/// enough to tell two builds apart when the same path was rebuilt in between.
fn describe_binary(path: &std::path::Path) -> String {
    match std::fs::metadata(path) {
        Ok(m) => {
            let mtime = m
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs());
            format!(
                "{} ({} bytes, modified at {mtime} s)",
                path.display(),
                m.len()
            )
        }
        Err(e) => format!("{} (unreadable: {e})", path.display()),
    }
}

/// Without `KLIO_BIN`, the `klio` built beside this benchmark (`target/release/klio`,
/// from `cargo build --release -p klio`) is the one measured, rather than the test
/// harness's default (its `klio-e2e`, a testing build that [`product_build`] refuses).
fn default_klio_bin() {
    if std::env::var_os("KLIO_BIN").is_some() {
        return;
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join("klio")));
    if let Some(klio) = beside.filter(|p| p.is_file()) {
        std::env::set_var("KLIO_BIN", klio);
    }
}

/// What `bin --version` prints; an error if it is a testing build (failpoints and test
/// knobs compiled in), unless `KLIO_BENCH_ALLOW_TESTING_BUILD` is set (an arm that needs a
/// test knob). `var` names where the path came from, for the message.
fn product_build(bin: &std::path::Path, var: &str) -> Result<String> {
    let out = std::process::Command::new(bin)
        .arg("--version")
        .output()
        .with_context(|| format!("running {} --version ({var})", bin.display()))?;
    ensure!(
        out.status.success(),
        "{} --version failed ({}): set {var} to a klio binary",
        bin.display(),
        out.status
    );
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    refuse_testing_build(
        &version,
        var,
        std::env::var_os("KLIO_BENCH_ALLOW_TESTING_BUILD").is_some(),
    )?;
    Ok(version)
}

/// The check behind [`product_build`], on the version line.
fn refuse_testing_build(version: &str, var: &str, allowed: bool) -> Result<()> {
    ensure!(
        allowed || !version.contains("testing build"),
        "{var} is a testing build (`{version}`), not the product: build klio on its own \
         (`cargo build --release -p klio`, then `cargo build --release -p klio-bench`; one \
         command for both unifies their features and compiles the test knobs into klio), \
         or set KLIO_BENCH_ALLOW_TESTING_BUILD=1 for an arm that needs a test knob"
    );
    Ok(())
}

/// Runs a warm-up of every arm, then `rounds` rounds in [`order`]; prints each phase.
pub fn run(title: &str, arms: &mut [Arm<'_>], rounds: usize) -> Result<Results> {
    if arms.is_empty() || rounds == 0 {
        bail!("a benchmark needs at least one arm and one round");
    }
    println!("{title}");
    println!(
        "  {rounds} rounds after a discarded warm-up, arms in the orders of a Williams design (each in every position and after every other equally often); before each phase: {}",
        host::settle_description()
    );
    if rounds < 3 {
        println!("  NOTE: fewer than 3 rounds; not a comparison to quote");
    }
    default_klio_bin();
    let klio = klio_tests::klio_bin();
    let version = product_build(&klio, "KLIO_BIN")?;
    println!("  klio: {}, {version}", describe_binary(&klio));
    if let Some(b) = std::env::var_os("KLIO_BIN_B") {
        let b = std::path::Path::new(&b);
        let version = product_build(b, "KLIO_BIN_B")?;
        println!("  KLIO_BIN_B: {}, {version}", describe_binary(b));
    }
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); arms.len()];
    let passes = std::iter::once(Pass::WarmUp).chain((1..=rounds).map(Pass::Round));
    for pass in passes {
        let idx = match pass {
            Pass::WarmUp => (0..arms.len()).collect(),
            Pass::Round(r) => order(arms.len(), r - 1),
        };
        for i in idx {
            let arm = &mut arms[i];
            host::settle()?;
            let load = host::loadavg();
            eprintln!("{pass}/{rounds}: {} ...", arm.name);
            let s = (arm.run)(pass).with_context(|| format!("{pass}: {}", arm.name))?;
            println!(
                "  {pass:>9}/{rounds} [load {load} -> {}] {:<34} {s}",
                host::loadavg(),
                arm.name
            );
            if pass != Pass::WarmUp {
                samples[i].push(s);
            }
        }
    }
    Ok(Results {
        title: title.to_owned(),
        arms: arms.iter().map(|a| a.name.clone()).zip(samples).collect(),
    })
}

/// Every counted sample of every arm.
#[derive(Debug)]
pub struct Results {
    title: String,
    arms: Vec<(String, Vec<Sample>)>,
}

impl Results {
    /// The rounds' values of `metric` for `arm`.
    pub fn values(&self, arm: &str, metric: &str) -> Result<Vec<f64>> {
        let (_, samples) = self
            .arms
            .iter()
            .find(|(n, _)| n == arm)
            .with_context(|| format!("no arm {arm:?}"))?;
        samples
            .iter()
            .map(|s| {
                s.get(metric)
                    .with_context(|| format!("arm {arm:?} has no figure {metric:?}"))
            })
            .collect()
    }

    /// The median of `metric` over the rounds of `arm`.
    pub fn median(&self, arm: &str, metric: &str) -> Result<f64> {
        Ok(median(&self.values(arm, metric)?))
    }

    /// `metric` of `arm` over that of `other`, round by round. The two ran in the same
    /// rounds, next to each other in time, so a drift of the host that lasts a round
    /// moves both sides of each ratio.
    pub fn paired_ratios(&self, arm: &str, other: &str, metric: &str) -> Result<Vec<f64>> {
        let a = self.values(arm, metric)?;
        let b = self.values(other, metric)?;
        ensure!(
            a.len() == b.len(),
            "{arm:?} and {other:?} ran different rounds"
        );
        Ok(a.iter().zip(&b).map(|(x, y)| x / y).collect())
    }

    /// Prints each arm's metrics: median and the rounds in order.
    pub fn print(&self) {
        println!("{}: medians (rounds in order)", self.title);
        for (arm, samples) in &self.arms {
            let Some(first) = samples.first() else {
                continue;
            };
            let parts: Vec<String> = first
                .metrics
                .iter()
                .map(|(m, _)| {
                    let v: Vec<f64> = samples.iter().filter_map(|s| s.get(m)).collect();
                    let rounds: Vec<String> = v.iter().map(|x| figure(*x)).collect();
                    format!("{m}={} ({})", figure(median(&v)), rounds.join(" "))
                })
                .collect();
            println!("  {arm:<34} {}", parts.join("  "));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_split_by_load_into_quieter_and_busier_halves() {
        let load = [3.0, 1.0, 5.0, 2.0, 4.0];
        let ratio = [1.3, 1.1, 1.5, 1.2, 1.4];
        assert_eq!(
            split_by_load(&load, &ratio),
            (vec![1.1, 1.2], vec![1.4, 1.5])
        );
        assert_eq!(
            split_by_load(&load[..4], &ratio[..4]),
            (vec![1.1, 1.2], vec![1.3, 1.5])
        );
        assert_eq!(split_by_load(&[], &[]), (vec![], vec![]));
    }

    #[test]
    fn two_arms_alternate_and_four_follow_the_williams_square() {
        assert_eq!(order(2, 0), [0, 1]);
        assert_eq!(order(2, 1), [1, 0]);
        assert_eq!(order(2, 2), [0, 1]);
        assert_eq!(order(1, 3), [0]);
        assert_eq!(order(4, 0), [0, 1, 3, 2]);
        assert_eq!(order(4, 1), [1, 2, 0, 3]);
    }

    #[test]
    fn every_arm_runs_in_every_position_and_after_every_other_equally_often() {
        for n in 2..=7 {
            let rounds = if n % 2 == 0 { n } else { 2 * n };
            let mut position = vec![vec![0; n]; n];
            let mut after = vec![vec![0; n]; n];
            for r in 0..rounds {
                let o = order(n, r);
                let mut sorted = o.clone();
                sorted.sort_unstable();
                assert_eq!(sorted, (0..n).collect::<Vec<_>>(), "{n} arms, round {r}");
                for (p, &a) in o.iter().enumerate() {
                    position[a][p] += 1;
                }
                for w in o.windows(2) {
                    after[w[1]][w[0]] += 1;
                }
            }
            let per_position = rounds / n;
            let per_pair = rounds / n;
            for a in 0..n {
                assert!(
                    position[a].iter().all(|&c| c == per_position),
                    "{n}: {position:?}"
                );
                for b in 0..n {
                    let want = if a == b { 0 } else { per_pair };
                    assert_eq!(after[a][b], want, "{n} arms: {after:?}");
                }
            }
        }
    }

    #[test]
    fn a_testing_build_is_refused_unless_allowed() {
        // The harness's klio-e2e has the test knobs compiled in, and says so.
        let bin = klio_tests::klio_bin();
        let err = product_build(&bin, "KLIO_BIN").unwrap_err().to_string();
        assert!(
            err.contains("KLIO_BIN is a testing build") && err.contains("-p klio`"),
            "{err}"
        );
        assert!(refuse_testing_build("klio 0.1.0", "KLIO_BIN", false).is_ok());
        let testing =
            "klio 0.1.0 (testing build: failpoints and test knobs compiled in, not for production)";
        assert!(refuse_testing_build(testing, "KLIO_BIN_B", false).is_err());
        assert!(refuse_testing_build(testing, "KLIO_BIN_B", true).is_ok());
    }

    #[test]
    fn median_interval_takes_the_order_statistics_that_cover_90_percent() {
        // Fewer than 5 rounds: even min..max covers under 90 % (4 rounds: 87.5 %).
        assert_eq!(median_interval(&[1.0, 2.0, 3.0, 4.0]), None);
        // 5 and 7 rounds: min..max (93.75 %, 98.4 %).
        let (lo, hi, cov) = median_interval(&[5.0, 1.0, 4.0, 2.0, 3.0]).unwrap();
        assert_eq!((lo, hi), (1.0, 5.0));
        assert!((cov - 0.9375).abs() < 1e-12);
        let v: Vec<f64> = (1..=7).map(f64::from).collect();
        assert_eq!(
            median_interval(&v).map(|(l, h, _)| (l, h)),
            Some((1.0, 7.0))
        );
        // 9 rounds: 2nd..8th (96.1 %); 11 rounds: 3rd..9th (93.5 %).
        let v: Vec<f64> = (1..=9).map(f64::from).collect();
        let (lo, hi, cov) = median_interval(&v).unwrap();
        assert_eq!((lo, hi), (2.0, 8.0));
        assert!((cov - (1.0 - 2.0 * 10.0 / 512.0)).abs() < 1e-12);
        let v: Vec<f64> = (1..=11).rev().map(f64::from).collect();
        let (lo, hi, cov) = median_interval(&v).unwrap();
        assert_eq!((lo, hi), (3.0, 9.0));
        assert!((cov - (1.0 - 2.0 * 67.0 / 2048.0)).abs() < 1e-12);
    }

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
    }
}
