//! Named network namespaces with a guard, and running code inside them.

use std::{
    fs::File,
    os::fd::AsRawFd,
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

use crate::cleanup;

/// A network namespace deleted on drop.
pub struct Netns {
    name: String,
}

/// A fresh `xdpvs-<pid>-<n>` prefix for one rig's namespaces.
pub fn unique_prefix() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "xdpvs-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

impl Netns {
    /// Creates the namespace and brings its loopback up.
    pub fn create(name: &str) -> Netns {
        cleanup::sweep_stale();
        run(Command::new("ip").args(["netns", "add", name]));
        cleanup::register_netns(name);
        let ns = Netns {
            name: name.to_owned(),
        };
        ns.ip("link set lo up");
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n <ns> <args>` (arguments split on white space); panics on failure.
    pub fn ip(&self, args: &str) -> String {
        let out = run(Command::new("ip")
            .args(["-n", &self.name])
            .args(args.split_whitespace()));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a program inside the namespace; panics if it cannot start or fails.
    pub fn exec(&self, program: &str, args: &[&str]) -> Output {
        run(Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args))
    }

    /// A command that runs `program` inside the namespace, to spawn and manage.
    pub fn command(&self, program: &std::path::Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// A veth pair `{name}0` (MAC `mac`, address `addr`) and `{name}1`, both up.
    pub fn veth(&self, name: &str, mac: [u8; 6], addr: &str) {
        let mac = mac_text(mac);
        self.ip(&format!(
            "link add {name}0 address {mac} type veth peer name {name}1"
        ));
        self.ip(&format!("addr add {addr} dev {name}0"));
        self.ip(&format!("link set {name}1 up"));
        self.ip(&format!("link set {name}0 up"));
    }

    /// A permanent neighbour entry: `address` is at `mac` on `dev`.
    pub fn permanent_neighbour(&self, address: &str, mac: [u8; 6], dev: &str) {
        self.ip(&format!(
            "neigh replace {address} lladdr {} dev {dev} nud permanent",
            mac_text(mac)
        ));
    }

    /// Writes a sysctl of this namespace (e.g. `net/ipv4/conf/all/arp_ignore`).
    pub fn sysctl(&self, key: &str, value: &str) {
        let path = format!("/proc/sys/{key}");
        let value = value.to_owned();
        self.enter(move || {
            std::fs::write(&path, value).unwrap_or_else(|e| panic!("writing {path}: {e}"))
        });
    }

    /// Runs `f` on a thread that has joined this namespace, and returns its result.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                self.join_current_thread();
                f()
            })
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    }

    /// Starts a thread inside this namespace.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = self.path();
        std::thread::spawn(move || {
            join(&path);
            f()
        })
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    fn join_current_thread(&self) {
        join(&self.path());
    }
}

fn join(path: &str) {
    let f = File::open(path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
    // SAFETY: setns(2) with a namespace descriptor we own; only this thread moves.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        crate::remove_pins(&self.name);
        cleanup::unregister_netns(&self.name);
    }
}

/// Runs a command to completion; panics with its output if it fails.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Index of an interface inside a namespace.
pub fn ifindex(ns: &Netns, interface: &str) -> u32 {
    let name = interface.to_owned();
    ns.enter(move || {
        let c = std::ffi::CString::new(name.clone()).unwrap_or_default();
        // SAFETY: a NUL-terminated name; if_nametoindex only reads it.
        let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
        assert_ne!(index, 0, "no interface {name}");
        index
    })
}

/// `02:00:00:00:00:a0`.
fn mac_text(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}
