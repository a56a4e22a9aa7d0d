//! The benchmark's tables (Markdown), the targets they are read against, and the block of
//! docs/PERFORMANCE.md that a run rewrites.

use std::{fmt::Write as _, path::Path};

use super::{control, health, lru, per_packet, per_packet::Target, rate, rate::Director};

/// Where a run's block starts and ends in docs/PERFORMANCE.md.
pub const BEGIN: &str = "<!-- bench:begin (written by `cargo xtask bench`; edit outside) -->";
pub const END: &str = "<!-- bench:end -->";

/// Everything one run measured.
#[derive(Default)]
pub struct Results {
    pub command: String,
    pub settings: String,
    pub per_packet: Vec<per_packet::Measured>,
    pub rate: Vec<rate::Measured>,
    pub control: Vec<control::Measured>,
    pub health: Vec<health::Measured>,
    pub lru: Vec<lru::Measured>,
    /// The differential run, if one was made: (frames, differing frames, differing
    /// counters, seconds).
    pub differential: Option<(u64, u64, usize, f64)>,
}

fn target_note(ratio: f64, limit: f64, at_most: bool) -> String {
    let met = if at_most {
        ratio <= limit
    } else {
        ratio >= limit
    };
    let sign = if at_most { "≤" } else { "≥" };
    format!("{sign} {limit}: {}", if met { "met" } else { "missed" })
}

impl Results {
    fn per_packet_table(&self, out: &mut String) {
        let Some(pass) = self.per_packet.iter().find(|m| m.target == Target::Pass) else {
            return;
        };
        let Some(swap) = self.per_packet.iter().find(|m| m.target == Target::MacSwap) else {
            return;
        };
        let _ = writeln!(
            out,
            "| path | ns/packet median | min | × XDP_PASS | × MAC swap | target |\n\
             |---|---:|---:|---:|---:|---|"
        );
        for m in &self.per_packet {
            let to_pass = m.ns.median / pass.ns.median;
            let to_swap = m.ns.median / swap.ns.median;
            let target = match m.goal {
                Some(g) if g.baseline == Target::Pass => {
                    format!("× XDP_PASS {}", target_note(to_pass, g.ratio, true))
                }
                Some(g) => format!("× MAC swap {}", target_note(to_swap, g.ratio, true)),
                None => String::new(),
            };
            let _ = writeln!(
                out,
                "| {} | {:.1} | {:.1} | {:.2} | {:.2} | {} |",
                m.name, m.ns.median, m.ns.min, to_pass, to_swap, target
            );
        }
    }

    fn lru_table(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "| LRU lists | CPUs inserting at once | ns/insert median | min | max | × per-CPU lists |\n\
             |---|---:|---:|---:|---:|---:|"
        );
        for m in &self.lru {
            let same = self
                .lru
                .iter()
                .find(|o| o.per_cpu_lists && o.cpus == m.cpus)
                .map_or(f64::NAN, |o| m.ns.median / o.ns.median);
            let _ = writeln!(
                out,
                "| {} | {} | {:.1} | {:.1} | {:.1} | {:.2} |",
                if m.per_cpu_lists {
                    "per CPU (`BPF_F_NO_COMMON_LRU`, xdpvs)"
                } else {
                    "one common list"
                },
                m.cpus,
                m.ns.median,
                m.ns.min,
                m.ns.max,
                same
            );
        }
    }

    fn rate_table(&self, out: &mut String) {
        let find = |d: Director| self.rate.iter().find(|m| m.director == d);
        let reflector = find(Director::Reflector);
        let nft = find(Director::NftablesDnat);
        let _ = writeln!(
            out,
            "| director | Mpps median | min | max | delivered | × reflector | × nftables | target |\n\
             |---|---:|---:|---:|---:|---:|---:|---|"
        );
        for m in &self.rate {
            let ratio = |base: Option<&rate::Measured>| {
                base.map(|b| m.mpps.median / b.mpps.median)
                    .unwrap_or(f64::NAN)
            };
            let (to_reflector, to_nft) = (ratio(reflector), ratio(nft));
            let target = if matches!(m.director, Director::XdpvsDr | Director::XdpvsNat) {
                format!(
                    "× reflector {}; × nftables {}",
                    target_note(to_reflector, 0.7, false),
                    target_note(to_nft, 10.0, false)
                )
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                "| {} | {:.3} | {:.3} | {:.3} | {:.1} % | {:.2} | {:.2} | {} |",
                m.director.label(),
                m.mpps.median,
                m.mpps.min,
                m.mpps.max,
                m.delivered * 100.0,
                to_reflector,
                to_nft,
                target
            );
        }
    }

    fn control_table(&self, out: &mut String) {
        let _ = writeln!(out, "| what | size | figure |\n|---|---|---|");
        for m in &self.control {
            let _ = writeln!(out, "| {} | {} | {} |", m.what, m.size, m.value);
        }
    }

    /// The block: when, where, how, then one table per part that ran.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Run {} on kernel {}, CPU {} ({} CPUs).\n\nCommand: `{}`  \nSettings: {}\n",
            utc_now(),
            kernel(),
            cpu_model(),
            super::online_cpus(),
            self.command,
            self.settings
        );
        if !self.per_packet.is_empty() {
            let _ = writeln!(out, "### Per-packet cost (BPF_PROG_TEST_RUN, one CPU)\n");
            self.per_packet_table(&mut out);
            out.push('\n');
        }
        if !self.rate.is_empty() {
            let _ = writeln!(
                out,
                "### Forwarding rate (live-frames generator → director → sink, veth, one CPU)\n"
            );
            self.rate_table(&mut out);
            out.push('\n');
        }
        if !self.control.is_empty() {
            let _ = writeln!(out, "### Control plane\n");
            self.control_table(&mut out);
            out.push('\n');
        }
        if !self.health.is_empty() {
            let _ = writeln!(
                out,
                "### Health checks (the daemon's own cost, /proc utime + stime)\n\n| what | figure |\n|---|---|"
            );
            for m in &self.health {
                let _ = writeln!(out, "| {} | {} |", m.what, m.value);
            }
            out.push('\n');
        }
        if !self.lru.is_empty() {
            let _ = writeln!(
                out,
                "### Connection-table inserts into a full 1M-entry LRU map (BPF_PROG_TEST_RUN)\n"
            );
            self.lru_table(&mut out);
            out.push('\n');
        }
        if let Some((frames, frames_off, counters_off, secs)) = self.differential {
            let _ = writeln!(
                out,
                "### Differential run (program vs reference model)\n\n{frames} frames in \
                 {secs:.1} s: {frames_off} frames and {counters_off} counters differ.\n"
            );
        }
        out
    }
}

/// Replaces the block between [`BEGIN`] and [`END`] in `path` (appends one if missing).
pub fn write_block(path: &Path, block: &str) -> std::io::Result<()> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let fresh = format!("{BEGIN}\n{block}{END}");
    let updated = match (text.find(BEGIN), text.find(END)) {
        (Some(b), Some(e)) if b < e => format!("{}{fresh}{}", &text[..b], &text[e + END.len()..]),
        _ => format!("{text}\n{fresh}\n"),
    };
    std::fs::write(path, updated)
}

fn utc_now() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|_| "(date unknown)".into())
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "(unknown)".into())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "(unknown)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_block_replaces_only_the_block() {
        let dir = std::env::temp_dir().join(format!("xdpvs-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let path = dir.join("PERF.md");
        std::fs::write(&path, format!("head\n{BEGIN}\nold\n{END}\ntail\n"))
            .unwrap_or_else(|e| panic!("{e}"));
        write_block(&path, "new\n").unwrap_or_else(|e| panic!("{e}"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(text, format!("head\n{BEGIN}\nnew\n{END}\ntail\n"));
        std::fs::remove_file(&path).unwrap_or_else(|e| panic!("{e}"));
        write_block(&path, "first\n").unwrap_or_else(|e| panic!("{e}"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(text, format!("\n{BEGIN}\nfirst\n{END}\n"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
