//! `cargo xtask bench`: where xdpvs stands against baselines and peers, every figure a
//! ratio within one run. `per_packet` (BPF_PROG_TEST_RUN), `rate` (frames through a
//! director on a netns rig), `control` (control-plane costs); `report` prints the tables
//! and writes docs/PERFORMANCE.md. Benchmarks report; they never fail on a figure.

pub mod control;
pub mod per_packet;
pub mod rate;
pub mod report;

/// Median, minimum and maximum of a set of samples.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Stat {
    /// Panics on an empty set: every figure comes from at least one sample.
    pub fn of(samples: &[f64]) -> Stat {
        assert!(!samples.is_empty(), "no samples");
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        let mid = s.len() / 2;
        let median = if s.len() % 2 == 1 {
            s[mid]
        } else {
            (s[mid - 1] + s[mid]) / 2.0
        };
        Stat {
            median,
            min: s[0],
            max: s[s.len() - 1],
        }
    }
}

/// An XDP program of a loaded object, by name.
pub fn xdp<'a>(ebpf: &'a mut aya::Ebpf, name: &str) -> &'a mut aya::programs::Xdp {
    ebpf.program_mut(name)
        .and_then(|p| p.try_into().ok())
        .unwrap_or_else(|| panic!("no XDP program {name} in the object"))
}

/// Pins the calling thread to one CPU, so a figure is one CPU's work.
pub fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    assert_eq!(
        rc,
        0,
        "pinning to CPU {cpu}: {}",
        std::io::Error::last_os_error()
    );
}

/// The CPU the benchmarks pin to: the last one (CPU 0 takes most interrupts).
pub fn bench_cpu() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get() - 1)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::Stat;

    #[test]
    fn stat_of_odd_and_even_sets() {
        let s = Stat::of(&[5.0, 1.0, 3.0]);
        assert_eq!((s.median, s.min, s.max), (3.0, 1.0, 5.0));
        let s = Stat::of(&[4.0, 1.0, 3.0, 2.0]);
        assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 4.0));
    }
}
