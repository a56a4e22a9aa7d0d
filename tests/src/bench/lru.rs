//! The connection table's map kind: an insert into a full LRU hash of 1M flow entries
//! with per-CPU LRU lists (`BPF_F_NO_COMMON_LRU`, what xdpvs uses) against one LRU list
//! shared by all CPUs, on one CPU and on every CPU at once. Each CPU inserts a new flow
//! per packet (`bench_lru_*` behind the restore wrapper; keys carry the CPU, so CPUs never
//! share one); the wrapper's own cost, measured on the same CPU, is taken off.

use std::sync::Barrier;

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, ProgramArray},
    programs::Xdp,
};
use lb_common::{
    bench as abi,
    conntrack::{Flow, FlowKeyV4, STATE_TCP_ESTABLISHED},
    maps::MAX_FLOWS,
};

use super::{
    Stat, fill_from_every_cpu, map_mut, per_packet, pin_to_cpu, set_template, time_runs, xdp,
};

/// One measured configuration.
#[derive(Clone, Debug)]
pub struct Measured {
    /// `true`: per-CPU LRU lists.
    pub per_cpu_lists: bool,
    /// CPUs inserting at once.
    pub cpus: usize,
    /// Nanoseconds per insert (mean over the CPUs), over rounds.
    pub ns: Stat,
}

/// Measures both map kinds: `rounds` rounds of `iterations` inserts per CPU. Runs on
/// threads of its own, so the caller's CPU affinity is left as it was.
pub fn measure(rounds: usize, iterations: u32) -> Vec<Measured> {
    crate::require_root();
    std::thread::scope(|s| {
        s.spawn(|| measure_on_threads(rounds, iterations))
            .join()
            .unwrap_or_else(|_| panic!("the insert measurement failed"))
    })
}

fn measure_on_threads(rounds: usize, iterations: u32) -> Vec<Measured> {
    let mut bench = EbpfLoader::new()
        .map_max_entries(abi::LRU_PERCPU_MAP, MAX_FLOWS)
        .map_max_entries(abi::LRU_COMMON_MAP, MAX_FLOWS)
        .load(lb_userspace::BENCH_OBJECT)
        .unwrap_or_else(|e| panic!("loading the bench object: {e}"));
    for name in [
        abi::programs::PASS,
        abi::programs::WRAPPER,
        abi::programs::LRU_PERCPU,
        abi::programs::LRU_COMMON,
    ] {
        xdp(&mut bench, name)
            .load()
            .unwrap_or_else(|e| panic!("loading {name}: {e}"));
    }
    let frame = per_packet::cases()
        .into_iter()
        .find(|c| c.flows != 0)
        .map(|c| c.frame)
        .unwrap_or_else(|| panic!("no new-flow case"));
    set_template(&mut bench, &frame, per_packet::NEW_FLOW_PACKETS as u32);
    let all = super::online_cpus();
    let mut out = Vec::new();
    for (per_cpu_lists, map, program) in [
        (true, abi::LRU_PERCPU_MAP, abi::programs::LRU_PERCPU),
        (false, abi::LRU_COMMON_MAP, abi::programs::LRU_COMMON),
    ] {
        fill(&mut bench, map, all - 1);
        for cpus in if all > 1 { vec![1, all] } else { vec![1] } {
            let mut samples = Vec::with_capacity(rounds);
            for _ in 0..rounds {
                samples.push(round(&mut bench, program, cpus, all, iterations));
            }
            out.push(Measured {
                per_cpu_lists,
                cpus,
                ns: Stat::of(&samples),
            });
        }
    }
    out
}

/// Fills `map` to capacity, a share from each CPU (a per-CPU list takes entries only
/// from its own CPU's share).
fn fill(bench: &mut Ebpf, name: &str, cpu_after: usize) {
    let mut map: HashMap<_, FlowKeyV4, Flow> =
        HashMap::try_from(map_mut(bench, name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let flow = Flow {
        state: STATE_TCP_ESTABLISHED,
        ..Flow::default()
    };
    fill_from_every_cpu(MAX_FLOWS, cpu_after, |n| {
        let key = FlowKeyV4 {
            src: n.to_be(),
            _pad: [0xff, 0, 0],
            ..FlowKeyV4::default()
        };
        map.insert(key, flow, 0)
            .unwrap_or_else(|e| panic!("filling {name}: {e}"));
    });
}

/// One round on the last `cpus` CPUs at once: ns per insert, the mean over the CPUs.
fn round(bench: &mut Ebpf, program: &str, cpus: usize, all: usize, iterations: u32) -> f64 {
    let cpu_list: Vec<usize> = (all - cpus..all).collect();
    let frame = template_frame(bench);
    // The wrapper alone (pointed at bench_pass), on each CPU.
    set_target(bench, abi::programs::PASS);
    let base: Vec<f64> = cpu_list
        .iter()
        .map(|&cpu| {
            pin_to_cpu(cpu);
            time_runs(
                wrapper(bench),
                &frame,
                None,
                iterations,
                per_packet::XDP_PASS,
            )
        })
        .collect();
    set_target(bench, program);
    let barrier = Barrier::new(cpus);
    let wrapper = wrapper(bench);
    let costs: Vec<f64> = std::thread::scope(|s| {
        let handles: Vec<_> = cpu_list
            .iter()
            .zip(&base)
            .map(|(&cpu, &base)| {
                let (barrier, frame) = (&barrier, &frame);
                s.spawn(move || {
                    pin_to_cpu(cpu);
                    barrier.wait();
                    time_runs(wrapper, frame, None, iterations, XDP_DROP) - base
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| panic!("a timing thread failed"))
            })
            .collect()
    });
    costs.iter().sum::<f64>() / costs.len() as f64
}

const XDP_DROP: u32 = 1;

fn template_frame(bench: &Ebpf) -> Vec<u8> {
    let t: aya::maps::Array<_, abi::Template> =
        aya::maps::Array::try_from(super::map(bench, abi::TEMPLATE_MAP))
            .unwrap_or_else(|e| panic!("{e}"));
    let t = t.get(&0, 0).unwrap_or_else(|e| panic!("{e}"));
    t.bytes[..t.len as usize].to_vec()
}

fn wrapper(bench: &Ebpf) -> &Xdp {
    bench
        .program(abi::programs::WRAPPER)
        .and_then(|p| p.try_into().ok())
        .unwrap_or_else(|| panic!("no wrapper"))
}

fn set_target(bench: &mut Ebpf, name: &str) {
    let fd = xdp(bench, name)
        .fd()
        .and_then(|fd| fd.try_clone().map_err(Into::into))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    ProgramArray::try_from(map_mut(bench, abi::TARGET_MAP))
        .and_then(|mut targets| targets.set(0, &fd, 0))
        .unwrap_or_else(|e| panic!("setting the wrapper's target: {e}"));
}
