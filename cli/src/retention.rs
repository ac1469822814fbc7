//! `klio retention show|apply`: what each tier's retention rules keep and remove, and
//! applying them now (the server also applies them after each backup and hourly).
//! Writes nothing locally.

use std::fmt::Write as _;

use clap::{Args, Subcommand};
use klio_api::client::ClientError;
use klio_api::{RetentionReport, RetentionRequest};

use crate::connection::{cluster_arg, ConnectionArgs};
use crate::output::{human_bytes, OutputFormat};
use crate::{print, print_json};

#[derive(Debug, Subcommand)]
pub enum RetentionCommand {
    /// Show what the rules keep and what they would remove now, and why (removes nothing).
    Show(RetentionArgs),
    /// Remove now what the rules do not keep (--dry-run: only show it).
    Apply(ApplyArgs),
}

#[derive(Debug, Args)]
pub struct RetentionArgs {
    #[arg(long, env = "KLIO_CLUSTER", value_name = "NAME")]
    pub cluster: Option<String>,
    /// One tier: 1 (local) or 2 (object storage); both by default.
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=2))]
    pub tier: Option<u8>,
    #[arg(long, short, value_enum, default_value_t)]
    pub output: OutputFormat,
    #[command(flatten)]
    pub connection: ConnectionArgs,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// Only show what would be removed.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub common: RetentionArgs,
}

pub(crate) async fn show(args: RetentionArgs) -> Result<(), ClientError> {
    let cluster = cluster_arg(args.cluster.as_deref())?;
    let report = args
        .connection
        .client()?
        .retention_show(&cluster, args.tier)
        .await?;
    output(&report, args.output)
}

pub(crate) async fn apply(args: ApplyArgs) -> Result<(), ClientError> {
    let a = args.common;
    let cluster = cluster_arg(a.cluster.as_deref())?;
    let req = RetentionRequest {
        dry_run: args.dry_run,
        tier: a.tier,
    };
    let report = a
        .connection
        .client()?
        .retention_apply(&cluster, &req)
        .await?;
    output(&report, a.output)?;
    match report.tiers.iter().find_map(|t| t.error.as_deref()) {
        Some(e) => Err(ClientError::Io(format!("retention stopped early: {e}"))),
        None => Ok(()),
    }
}

fn output(report: &RetentionReport, format: OutputFormat) -> Result<(), ClientError> {
    match format {
        OutputFormat::Json => print_json(report),
        OutputFormat::Table => print(&table(report)),
    }
}

/// The report as text: per tier, the rules, what stays and what goes, with why.
pub fn table(r: &RetentionReport) -> String {
    let mut out = String::new();
    let (verb, line) = match r.applied {
        true => ("removed", "removed"),
        false => ("would remove", "remove"),
    };
    for t in &r.tiers {
        let _ = writeln!(out, "Tier {} of cluster {}: {}", t.tier, r.cluster, t.rules);
        for k in &t.kept {
            let _ = writeln!(out, "  keep    backup {}  ({})", k.id, k.reasons.join("; "));
        }
        for o in &t.removed {
            let _ = writeln!(
                out,
                "  {line:<7} {} {}  {}  ({})",
                o.kind,
                o.name,
                human_bytes(o.bytes),
                o.why
            );
        }
        if t.removed.is_empty() {
            let _ = writeln!(out, "  nothing to remove");
        } else {
            let _ = writeln!(
                out,
                "  {verb} {} object(s), {}",
                t.removed.len(),
                human_bytes(t.removed_bytes)
            );
        }
        for h in &t.held_back {
            let _ = writeln!(out, "  kept for now: {h}");
        }
        if let Some(e) = &t.error {
            let _ = writeln!(out, "  stopped: {e}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use klio_api::{KeptBackup, RemovedObject, TierRetention};

    fn report(applied: bool) -> RetentionReport {
        RetentionReport {
            cluster: "pg-main".parse().unwrap(),
            applied,
            tiers: vec![TierRetention {
                tier: 1,
                rules: "latest = 1".into(),
                kept: vec![KeptBackup {
                    id: "20261126T010000Z".parse().unwrap(),
                    reasons: vec!["the newest backup".into(), "latest = 1".into()],
                }],
                removed: vec![RemovedObject {
                    kind: "backup".into(),
                    name: "20261125T010000Z".into(),
                    bytes: 3 << 20,
                    why: "kept by no rule (latest = 1)".into(),
                }],
                removed_bytes: 3 << 20,
                held_back: vec!["pack p: not in Tier 2 yet".into()],
                error: None,
            }],
        }
    }

    #[test]
    fn the_table_says_what_stays_what_goes_and_why() {
        let dry = table(&report(false));
        assert!(
            dry.contains("Tier 1 of cluster pg-main: latest = 1"),
            "{dry}"
        );
        assert!(
            dry.contains("keep    backup 20261126T010000Z  (the newest backup; latest = 1)"),
            "{dry}"
        );
        assert!(dry.contains("remove  backup 20261125T010000Z"), "{dry}");
        assert!(dry.contains("(kept by no rule (latest = 1))"), "{dry}");
        assert!(dry.contains("would remove 1 object(s)"), "{dry}");
        assert!(
            dry.contains("kept for now: pack p: not in Tier 2 yet"),
            "{dry}"
        );
        let applied = table(&report(true));
        assert!(
            applied.contains("removed backup 20261125T010000Z"),
            "{applied}"
        );
        assert!(applied.contains("removed 1 object(s)"), "{applied}");
    }
}
