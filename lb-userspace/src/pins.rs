//! The pinned data path: where the daemon pins its maps and XDP links on bpffs, so the
//! program keeps forwarding while the daemon restarts, crashes or is upgraded, and a
//! new daemon adopts what the old one left (docs/OPERATIONS.md, "Restarts and upgrades").
//!
//! A pin directory holds one file per map (named after the map) and one per attached
//! interface (`link_<interface>`). Before anything is loaded, the maps found there are
//! checked against what this build would create (type, key and value size, capacity,
//! flags) and against the network namespace that owns them: aya reuses a pinned map by
//! name without looking at its layout.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use aya::maps::{Array, Map, MapData};
use lb_common::{conntrack::Settings, maps};

use crate::config::Limits;

/// Where the daemon pins by default. Mounted as bpffs if nothing is mounted there.
pub const DEFAULT_DIR: &str = "/sys/fs/bpf/xdpvs";

/// `statfs` magic of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// A map flag the kernel sets on device maps of its own accord.
const BPF_F_RDONLY_PROG: u32 = 1 << 7;

/// Prefix of every map name xdpvs has used: the only map pins it removes.
const MAP_PREFIX: &str = "XDPVS_";

/// Prefix of a link pin's file name; the interface name follows, with each `.` written
/// as `:` (bpffs reserves names with dots; interface names never hold a colon).
const LINK_PREFIX: &str = "link_";

/// Why pinned state cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{dir} is not on a bpf filesystem, so pins there would not outlive the daemon; mount \
         one (`mount -t bpf bpf {dir}`) or choose another --bpf-dir"
    )]
    NotBpffs { dir: PathBuf },
    #[error(
        "{dir} is the root of a bpf filesystem, shared with other tools' pins; use a \
         directory of its own under it (the default is /sys/fs/bpf/xdpvs)"
    )]
    MountRoot { dir: PathBuf },
    #[error("{dir}: bpffs refuses names with a dot; choose a --bpf-dir without one")]
    Dotted { dir: PathBuf },
    #[error("the XDP object cannot be read: {0}")]
    Object(String),
    #[error(
        "{dir}/{map}: the pinned map has {field} {pinned}, this daemon needs {wanted}; \
         {advice}"
    )]
    Layout {
        dir: PathBuf,
        map: &'static str,
        field: &'static str,
        pinned: u64,
        wanted: u64,
        advice: &'static str,
    },
    #[error(
        "{dir} holds the data path of a director in another network namespace (cookie \
         {owner}, this one is {ours}); give each director its own --bpf-dir"
    )]
    Owner { dir: PathBuf, owner: u64, ours: u64 },
    #[error("{dir}/{map}: {source}")]
    Map {
        dir: PathBuf,
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

fn io_err(path: &Path) -> impl Fn(io::Error) -> PinError + '_ {
    move |source| PinError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What a pin directory held when the daemon started.
#[derive(Debug, PartialEq, Eq)]
pub enum Found {
    /// No map of this build: the maps are created (and pinned) empty.
    Nothing,
    /// Every map of this build, with the right layout: they are reused as they are.
    Everything,
    /// Some maps of this build but not all (a build with other map versions left them):
    /// their pins are removed and every map is created empty, since ids in one map are
    /// only meaningful with the others. The program still attached keeps its own maps
    /// until its links are switched to the new program.
    Partial { missing: Vec<&'static str> },
}

/// This thread's network namespace cookie (`SO_NETNS_COOKIE`): unique for the boot and
/// never reused, unlike an inode number.
pub fn netns_cookie() -> io::Result<u64> {
    // SAFETY: a plain socket(2); the descriptor is owned at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and nothing else owns it.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

/// Whether `path` is on a bpf filesystem.
pub fn is_bpffs(path: &Path) -> io::Result<bool> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: statfs on a NUL-terminated path into a zeroed, owned struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_type == BPF_FS_MAGIC)
}

/// Makes `dir` (creating it) on bpffs. For the default directory, a missing bpffs is
/// mounted at /sys/fs/bpf, as systemd would have; any other directory must already be on
/// one.
pub fn prepare(dir: &Path) -> Result<(), PinError> {
    let parent = dir.parent().unwrap_or(Path::new("/"));
    if dir == Path::new(DEFAULT_DIR) && !is_bpffs(parent).map_err(io_err(parent))? {
        let target = c"/sys/fs/bpf";
        // SAFETY: mount(2) with NUL-terminated strings and no data.
        let rc = unsafe {
            libc::mount(
                c"bpf".as_ptr(),
                target.as_ptr(),
                c"bpf".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(io_err(parent)(io::Error::last_os_error()));
        }
        log::info!("mounted bpffs at /sys/fs/bpf");
    }
    if let Err(e) = std::fs::create_dir_all(dir) {
        // bpffs refuses names with a dot (reserved for its own files) with EPERM.
        let dotted = dir
            .file_name()
            .is_some_and(|n| n.to_string_lossy().contains('.'));
        if dotted && e.raw_os_error() == Some(libc::EPERM) {
            return Err(PinError::Dotted {
                dir: dir.to_owned(),
            });
        }
        return Err(io_err(dir)(e));
    }
    if !is_bpffs(dir).map_err(io_err(dir))? {
        return Err(PinError::NotBpffs {
            dir: dir.to_owned(),
        });
    }
    // The mount's root is shared with every other bpf tool's pins: xdpvs wants its own
    // directory under it.
    if !is_bpffs(parent).unwrap_or(false) {
        return Err(PinError::MountRoot {
            dir: dir.to_owned(),
        });
    }
    Ok(())
}

/// Map definitions of the XDP object with the capacities `limits` give them, by name.
fn wanted_maps(limits: Limits) -> Result<Vec<(&'static str, aya_obj::Map)>, PinError> {
    let object = aya_obj::Object::parse(crate::dataplane::BPF_OBJECT)
        .map_err(|e| PinError::Object(e.to_string()))?;
    let mut out = Vec::new();
    for name in maps::ALL {
        let mut def = object
            .maps
            .get(name)
            .cloned()
            .ok_or_else(|| PinError::Object(format!("no map {name}")))?;
        if let Some(entries) = crate::dataplane::capacity(name, limits) {
            def.set_max_entries(entries);
        }
        out.push((name, def));
    }
    Ok(out)
}

/// Which limit sets a map's capacity, for the refusal message.
fn advice(name: &str) -> &'static str {
    match name {
        maps::CONNTRACK_V4 => {
            "limits.max_flows changed: keep the old value, or run `xdpvs teardown` first \
             (that drops the connection table: established flows are scheduled afresh)"
        }
        maps::FRAGMENTS_V4 => {
            "limits.max_fragments changed: keep the old value, or run `xdpvs teardown` first"
        }
        maps::PERSIST_V4 => {
            "limits.max_persistent changed: keep the old value, or run `xdpvs teardown` first \
             (that forgets which real each persistent client is on)"
        }
        maps::REALS | maps::REAL_STATS | maps::REAL_CONNS => {
            "limits.max_reals changed: keep the old value, or run `xdpvs teardown` first \
             (that drops the connection table)"
        }
        maps::SERVICES
        | maps::SERVICE_PARAMS
        | maps::VIPS
        | maps::SERVICE_STATS
        | maps::SCHED_TABLES
        | maps::RR_CURSORS => {
            "limits.max_services changed: keep the old value, or run `xdpvs teardown` first \
             (that drops the connection table)"
        }
        _ => "a map of this name but another layout: run `xdpvs teardown` first",
    }
}

/// Checks the maps pinned in `dir` against this build and `limits`, and their owner
/// against this network namespace; says what is there. Pins of a partial set are
/// removed (see [`Found::Partial`]).
pub fn check(dir: &Path, limits: Limits, netns: u64) -> Result<Found, PinError> {
    check_owner(dir, netns)?;
    let mut present = Vec::new();
    let mut missing = Vec::new();
    for (name, def) in wanted_maps(limits)? {
        let path = dir.join(name);
        if !path.exists() {
            missing.push(name);
            continue;
        }
        let data = MapData::from_pin(&path).map_err(|source| PinError::Map {
            dir: dir.to_owned(),
            map: name,
            source,
        })?;
        let info = data.info().map_err(|source| PinError::Map {
            dir: dir.to_owned(),
            map: name,
            source,
        })?;
        let pinned_type = info.map_type().map(|t| t as u32).unwrap_or(u32::MAX);
        for (field, pinned, wanted) in [
            ("type", pinned_type, def.map_type()),
            ("key size", info.key_size(), def.key_size()),
            ("value size", info.value_size(), def.value_size()),
            ("capacity", info.max_entries(), def.max_entries()),
            // The kernel marks device maps read-only for programs itself.
            (
                "flags",
                info.map_flags() & !BPF_F_RDONLY_PROG,
                def.map_flags(),
            ),
        ] {
            if pinned != wanted {
                return Err(PinError::Layout {
                    dir: dir.to_owned(),
                    map: name,
                    field,
                    pinned: pinned.into(),
                    wanted: wanted.into(),
                    advice: advice(name),
                });
            }
        }
        present.push(name);
    }
    if present.is_empty() {
        return Ok(Found::Nothing);
    }
    if missing.is_empty() {
        return Ok(Found::Everything);
    }
    for name in present {
        let path = dir.join(name);
        std::fs::remove_file(&path).map_err(io_err(&path))?;
    }
    Ok(Found::Partial { missing })
}

/// Removes the pins of this build's maps from `dir` (the maps live on while a program
/// or process holds them); a missing pin is no error.
pub fn remove_maps(dir: &Path) {
    for name in maps::ALL {
        match std::fs::remove_file(dir.join(name)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                log::warn!("removing {}/{name}: {e}", dir.display())
            }
            _ => {}
        }
    }
}

/// Removes the maps a start pinned if it does not get as far as attaching, so a
/// refused or interrupted first start leaves nothing pinned. Disarm it once attached.
pub struct FreshMaps<'a> {
    dir: Option<&'a Path>,
}

impl<'a> FreshMaps<'a> {
    /// Armed when the maps are new (`found` is not [`Found::Everything`]).
    pub fn new(dir: &'a Path, found: &Found) -> FreshMaps<'a> {
        FreshMaps {
            dir: (*found != Found::Everything).then_some(dir),
        }
    }

    pub fn disarm(mut self) {
        self.dir = None;
    }
}

impl Drop for FreshMaps<'_> {
    fn drop(&mut self) {
        if let Some(dir) = self.dir {
            remove_maps(dir);
        }
    }
}

/// Refuses a directory whose maps a director in another network namespace owns: the
/// owner's cookie is in the pinned `SETTINGS` (0 or absent: nobody's yet).
pub fn check_owner(dir: &Path, netns: u64) -> Result<(), PinError> {
    let path = dir.join(maps::SETTINGS);
    if !path.exists() {
        return Ok(());
    }
    let map_err = |source| PinError::Map {
        dir: dir.to_owned(),
        map: maps::SETTINGS,
        source,
    };
    let data = MapData::from_pin(&path).map_err(map_err)?;
    // A layout this build does not know is for `check` to report.
    let Ok(settings) = Array::<_, Settings>::try_from(Map::Array(data)) else {
        return Ok(());
    };
    let owner = settings.get(&0, 0).map_err(map_err)?.owner_netns;
    if owner != 0 && owner != netns {
        return Err(PinError::Owner {
            dir: dir.to_owned(),
            owner,
            ours: netns,
        });
    }
    Ok(())
}

/// Pin path of a map.
pub fn map_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

/// Pin path of the link that attaches the program to `interface`.
pub fn link_path(dir: &Path, interface: &str) -> PathBuf {
    dir.join(format!("{LINK_PREFIX}{}", interface.replace('.', ":")))
}

/// Interfaces with a link pinned in `dir`.
pub fn pinned_links(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix(LINK_PREFIX))
                .map(|n| n.replace(':', "."))
        })
        .collect();
    names.sort();
    names
}

/// Maps of other xdpvs builds pinned in `dir` (names with xdpvs's prefix that this build
/// does not use); anything else there is left alone.
pub fn foreign_pins(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|n| n.starts_with(MAP_PREFIX) && !maps::ALL.contains(&n.as_str()))
        .collect();
    names.sort();
    names
}

/// The interface index a pinned XDP link is attached to; 0 when its device is gone (the
/// kernel detached it).
pub fn link_ifindex(path: &Path) -> io::Result<u32> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // BPF_OBJ_GET: pathname (u64), bpf_fd (u32), file_flags (u32).
    let mut attr = [0u64; 3];
    attr[0] = c.as_ptr() as u64;
    // SAFETY: bpf(2) reads `size` bytes of `attr`, which outlives the call, as does the
    // path it points to.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            7, // BPF_OBJ_GET
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    let link = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // struct bpf_link_info: type, id, prog_id, then a union at offset 16 whose `xdp`
    // member starts with the ifindex.
    let mut info = [0u32; 32];
    // BPF_OBJ_GET_INFO_BY_FD: bpf_fd (u32), info_len (u32), info (u64).
    let mut attr = [0u64; 2];
    attr[0] = u64::from(link.as_raw_fd() as u32) | ((std::mem::size_of_val(&info) as u64) << 32);
    attr[1] = info.as_mut_ptr() as u64;
    // SAFETY: bpf(2) writes at most info_len bytes into `info`, which outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            15, // BPF_OBJ_GET_INFO_BY_FD
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    const BPF_LINK_TYPE_XDP: u32 = 6;
    if info[0] != BPF_LINK_TYPE_XDP {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is not an XDP link", path.display()),
        ));
    }
    Ok(info[4])
}

/// What [`remove_all`] removed.
#[derive(Debug, Default)]
pub struct Removed {
    /// Interfaces whose link was unpinned (and so detached).
    pub links: Vec<String>,
    /// Other pins: maps.
    pub maps: usize,
}

impl std::fmt::Display for Removed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.links.is_empty() {
            write!(f, "no link, {} maps", self.maps)
        } else {
            write!(f, "links of {}, {} maps", self.links.join(" "), self.maps)
        }
    }
}

/// Removes xdpvs's pins in `dir` (links first, so the program is detached before its
/// maps go) and the directory if nothing else is in it.
pub fn remove_all(dir: &Path) -> Result<Removed, PinError> {
    let mut removed = Removed::default();
    for interface in pinned_links(dir) {
        let path = link_path(dir, &interface);
        std::fs::remove_file(&path).map_err(io_err(&path))?;
        removed.links.push(interface);
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.filter_map(Result::ok) {
            if !e.file_name().to_string_lossy().starts_with(MAP_PREFIX) {
                continue;
            }
            let path = e.path();
            std::fs::remove_file(&path).map_err(io_err(&path))?;
            removed.maps += 1;
        }
    }
    match std::fs::remove_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) if e.kind() == io::ErrorKind::DirectoryNotEmpty => {
            log::warn!(
                "{} holds pins that are not xdpvs's; left there",
                dir.display()
            )
        }
        Err(e) => return Err(io_err(dir)(e)),
        Ok(()) => {}
    }
    Ok(removed)
}
