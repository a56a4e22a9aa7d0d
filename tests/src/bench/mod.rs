//! `cargo xtask bench`: where xdpvs stands against baselines and peers, every figure a
//! ratio within one run. `per_packet` (BPF_PROG_TEST_RUN), `rate` (frames through a
//! director on a netns rig), `control` (control-plane costs); `report` prints the tables
//! and writes docs/PERFORMANCE.md. Benchmarks report; they never fail on a figure.

pub mod control;
pub mod health;
pub mod lru;
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

/// Offsets in an untagged IPv4 frame that the helper programs vary: the last byte of the
/// source address, the source port, the IPv4 header (checksum recomputed).
const ADDR_OFFSET: u16 = 14 + 15;
const PORT_OFFSET: u16 = 14 + 20;
const IPV4_OFFSET: u16 = 14;

/// Makes `frame` (untagged IPv4, TCP or UDP) the template of the helper object's wrapper
/// and generator, cycling through `flows` flows (0: the frame as it is). See
/// `lb_common::bench::Template`.
pub fn set_template(ebpf: &mut aya::Ebpf, frame: &[u8], flows: u32) {
    use lb_common::bench::{TEMPLATE_BYTES, TEMPLATE_MAP, Template};
    assert!(
        frame.len() <= TEMPLATE_BYTES,
        "frame too long for a template"
    );
    let mut t = Template {
        len: frame.len() as u32,
        flows,
        addr_offset: ADDR_OFFSET,
        port_offset: PORT_OFFSET,
        ipv4_offset: IPV4_OFFSET,
        ..Template::default()
    };
    t.bytes[..frame.len()].copy_from_slice(frame);
    aya::maps::Array::<_, Template>::try_from(map_mut(ebpf, TEMPLATE_MAP))
        .and_then(|mut a| a.set(0, t, 0))
        .unwrap_or_else(|e| panic!("setting the template: {e}"));
}

/// A map of a loaded object, by name.
pub fn map<'a>(ebpf: &'a aya::Ebpf, name: &str) -> &'a aya::maps::Map {
    ebpf.map(name)
        .unwrap_or_else(|| panic!("no map {name} in the object"))
}

/// Mutable variant of [`map`].
pub fn map_mut<'a>(ebpf: &'a mut aya::Ebpf, name: &str) -> &'a mut aya::maps::Map {
    ebpf.map_mut(name)
        .unwrap_or_else(|| panic!("no map {name} in the object"))
}

/// An XDP program of a loaded object, by name.
pub fn xdp<'a>(ebpf: &'a mut aya::Ebpf, name: &str) -> &'a mut aya::programs::Xdp {
    ebpf.program_mut(name)
        .and_then(|p| p.try_into().ok())
        .unwrap_or_else(|| panic!("no XDP program {name} in the object"))
}

/// Nanoseconds per run of `program` over `iterations` runs of `frame`, as the kernel
/// measures it around its repeat loop (an integer: the kernel divides its total by
/// `repeat`; a wall clock around the call would add the call's own set-up, which was
/// milliseconds here). `ctx` is the `xdp_md` to run with, if any. Panics if a run
/// returns another action than `expected`.
pub fn time_runs(
    program: &aya::programs::Xdp,
    frame: &[u8],
    ctx: Option<&[u8]>,
    iterations: u32,
    expected: u32,
) -> f64 {
    use aya::programs::{TestRun, TestRunOptions};
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(frame),
            ctx_in: ctx,
            repeat: iterations,
            ..TestRunOptions::default()
        })
        .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN: {e}"));
    assert_eq!(
        result.return_value, expected,
        "returned {} while being timed",
        result.return_value
    );
    result.duration.as_nanos() as f64
}

/// Calls `insert(n)` for `total` numbers, an equal share from each CPU in turn (pinned
/// there): an LRU map with per-CPU lists takes each new entry from the inserting CPU's
/// share, so filling it to capacity needs every CPU. Leaves the thread pinned to
/// `cpu_after`.
pub fn fill_from_every_cpu(total: u32, cpu_after: usize, mut insert: impl FnMut(u32)) {
    let cpus = online_cpus();
    let per_cpu = total / cpus as u32 + 1;
    for cpu in 0..cpus {
        pin_to_cpu(cpu);
        for i in 0..per_cpu {
            insert(cpu as u32 * per_cpu + i);
        }
    }
    pin_to_cpu(cpu_after);
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
    online_cpus() - 1
}

/// CPUs online on the machine, whatever the calling thread is pinned to
/// (`available_parallelism` answers for the thread's affinity).
pub fn online_cpus() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).ok().filter(|&n| n > 0).unwrap_or(1)
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
