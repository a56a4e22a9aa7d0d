//! The configuration file as a document, which runtime changes edit: a YAML tree kept as
//! the operator wrote it (every field, in its order; comments are not kept), changed by
//! one edit at a time, validated as a whole file would be (`Config::parse` on the text it
//! will be written as), and written atomically.

use std::{
    io::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::config::{Config, ConfigError, Protocol};

/// A change that cannot be made to the document.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error("{0} does not exist")]
    NotFound(String),
    #[error("{0} already exists")]
    Exists(String),
    #[error("{0}")]
    Invalid(String),
}

/// Names a virtual service: protocol, address and port, as `ipvsadm -t/-u ADDR:PORT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceId {
    pub protocol: Protocol,
    pub address: IpAddr,
    pub port: u16,
}

impl std::fmt::Display for ServiceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.address {
            IpAddr::V6(a) => write!(f, "service {} [{a}]:{}", self.protocol, self.port),
            IpAddr::V4(a) => write!(f, "service {} {a}:{}", self.protocol, self.port),
        }
    }
}

/// A virtual service's fields as a request gives them: for a new service (`ipvsadm -A`;
/// the scheduler defaults to `sh`) or a change (`ipvsadm -E`; absent fields stay).
#[derive(Clone, Debug, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceFields {
    pub name: Option<String>,
    pub scheduler: Option<String>,
    pub forwarding: Option<String>,
    /// `sh`, `mh`: hash the client's port too.
    pub hash_port: Option<bool>,
    /// `sh`, `dh`, `mh`: the Maglev table's size.
    pub table_size: Option<u32>,
    /// Persistence timeout in seconds (`ipvsadm -p`); 0 removes persistence.
    pub persistent: Option<u32>,
    /// Persistence granularity (`ipvsadm -M`), with persistence.
    pub netmask: Option<String>,
}

impl ServiceFields {
    /// Writes the persistence fields into service `s` (absent ones stay).
    fn set_persistence(&self, s: &mut Map<String, Value>) -> Result<(), EditError> {
        match self.persistent {
            Some(0) => {
                s.remove("persistence");
            }
            Some(timeout) => {
                let p = s
                    .entry("persistence")
                    .or_insert_with(|| Value::Object(Map::new()));
                if !p.is_object() {
                    *p = Value::Object(Map::new());
                }
                p["timeout"] = Value::from(timeout);
            }
            None => {}
        }
        if let Some(mask) = &self.netmask {
            match s.get_mut("persistence").filter(|p| p.is_object()) {
                Some(p) => p["netmask"] = Value::from(mask.clone()),
                None => {
                    return Err(EditError::Invalid(
                        "a netmask (-M) needs persistence (-p)".into(),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A real server to add (`ipvsadm -a`) or change (`ipvsadm -e`, drain); absent fields
/// are defaults (add) or stay (change).
#[derive(Clone, Debug, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RealChange {
    pub weight: Option<u32>,
    pub drained: Option<bool>,
}

/// The configuration document.
#[derive(Clone, Debug, PartialEq)]
pub struct Document {
    tree: Value,
}

impl Document {
    /// Reads a document from text that `Config::parse` accepted (so within its budget).
    pub fn parse(text: &str, path: &Path) -> Result<Document, ConfigError> {
        let tree: Value = serde_saphyr::from_str_with_options(text, crate::config::yaml_options())
            .map_err(|e| ConfigError::Parse {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
        if !tree.is_object() {
            return Err(ConfigError::Parse {
                path: path.to_owned(),
                message: "the file is not a mapping".into(),
            });
        }
        Ok(Document { tree })
    }

    /// A document with a director on these interfaces and these services.
    pub fn new(interfaces: &[String], services: Vec<Value>) -> Document {
        let mut root = Map::new();
        root.insert(
            "director".into(),
            serde_json::json!({ "interfaces": interfaces }),
        );
        root.insert("services".into(), Value::Array(services));
        Document {
            tree: Value::Object(root),
        }
    }

    /// Replaces every service.
    pub fn set_services(&mut self, services: Vec<Value>) -> Result<(), EditError> {
        *self.services()? = services;
        Ok(())
    }

    /// The document as YAML text.
    pub fn to_yaml(&self) -> String {
        serde_saphyr::to_string(&self.tree).unwrap_or_else(|e| format!("# {e}\n"))
    }

    /// Validates the document as the file it would be written as.
    pub fn validate(&self, path: &Path) -> Result<Config, ConfigError> {
        Config::parse(&self.to_yaml(), path)
    }

    fn services(&mut self) -> Result<&mut Vec<Value>, EditError> {
        let root = self
            .tree
            .as_object_mut()
            .ok_or_else(|| EditError::Invalid("the document is not a mapping".into()))?;
        let services = root
            .entry("services")
            .or_insert_with(|| Value::Array(Vec::new()));
        if services.is_null() {
            *services = Value::Array(Vec::new());
        }
        services
            .as_array_mut()
            .ok_or_else(|| EditError::Invalid("services is not a list".into()))
    }

    fn service_at(&mut self, id: ServiceId) -> Result<usize, EditError> {
        self.services()?
            .iter()
            .position(|s| is_service(s, id))
            .ok_or_else(|| EditError::NotFound(id.to_string()))
    }

    fn service(&mut self, id: ServiceId) -> Result<&mut Map<String, Value>, EditError> {
        let at = self.service_at(id)?;
        self.services()?[at]
            .as_object_mut()
            .ok_or_else(|| EditError::Invalid(format!("{id} is not a mapping")))
    }

    /// Adds a virtual service with no reals.
    pub fn add_service(&mut self, id: ServiceId, new: &ServiceFields) -> Result<(), EditError> {
        if self.service_at(id).is_ok() {
            return Err(EditError::Exists(id.to_string()));
        }
        let mut s = Map::new();
        if let Some(name) = &new.name {
            s.insert("name".into(), Value::from(name.clone()));
        }
        s.insert("address".into(), Value::from(id.address.to_string()));
        s.insert("port".into(), Value::from(id.port));
        s.insert("protocol".into(), Value::from(id.protocol.to_string()));
        s.insert(
            "scheduler".into(),
            Value::from(new.scheduler.clone().unwrap_or_else(|| "sh".into())),
        );
        if let Some(f) = &new.forwarding {
            s.insert("forwarding".into(), Value::from(f.clone()));
        }
        if let Some(h) = new.hash_port {
            s.insert("hash_port".into(), Value::from(h));
        }
        if let Some(n) = new.table_size {
            s.insert("table_size".into(), Value::from(n));
        }
        new.set_persistence(&mut s)?;
        s.insert("reals".into(), Value::Array(Vec::new()));
        self.services()?.push(Value::Object(s));
        Ok(())
    }

    /// Changes a virtual service's scheduler, method or name.
    pub fn edit_service(&mut self, id: ServiceId, change: &ServiceFields) -> Result<(), EditError> {
        let s = self.service(id)?;
        for (key, value) in [
            ("name", &change.name),
            ("scheduler", &change.scheduler),
            ("forwarding", &change.forwarding),
        ] {
            if let Some(v) = value {
                s.insert(key.into(), Value::from(v.clone()));
            }
        }
        // A new scheduler drops the options only the old one had (as `ipvsadm -E -s`
        // does), unless the change gives them again.
        if let Some(scheduler) = &change.scheduler {
            if !matches!(scheduler.as_str(), "sh" | "dh" | "mh") {
                s.remove("table_size");
            }
            if !matches!(scheduler.as_str(), "sh" | "mh") {
                s.remove("hash_port");
            }
        }
        if let Some(h) = change.hash_port {
            s.insert("hash_port".into(), Value::from(h));
        }
        if let Some(n) = change.table_size {
            s.insert("table_size".into(), Value::from(n));
        }
        change.set_persistence(s)
    }

    /// Removes a virtual service and its reals.
    pub fn delete_service(&mut self, id: ServiceId) -> Result<(), EditError> {
        let at = self.service_at(id)?;
        self.services()?.remove(at);
        Ok(())
    }

    fn reals(&mut self, id: ServiceId) -> Result<&mut Vec<Value>, EditError> {
        let s = self.service(id)?;
        let reals = s.entry("reals").or_insert_with(|| Value::Array(Vec::new()));
        if reals.is_null() {
            *reals = Value::Array(Vec::new());
        }
        reals
            .as_array_mut()
            .ok_or_else(|| EditError::Invalid(format!("{id}: reals is not a list")))
    }

    fn real_at(
        &mut self,
        id: ServiceId,
        address: IpAddr,
        port: Option<u16>,
    ) -> Result<usize, EditError> {
        let port = port.unwrap_or(id.port);
        self.reals(id)?
            .iter()
            .position(|r| is_real(r, address, port, id.port))
            .ok_or_else(|| EditError::NotFound(real_name(id, address, port)))
    }

    /// Adds a real server to a service.
    pub fn add_real(
        &mut self,
        id: ServiceId,
        address: IpAddr,
        port: Option<u16>,
        change: &RealChange,
    ) -> Result<(), EditError> {
        if self.real_at(id, address, port).is_ok() {
            return Err(EditError::Exists(real_name(
                id,
                address,
                port.unwrap_or(id.port),
            )));
        }
        let mut r = Map::new();
        r.insert("address".into(), Value::from(address.to_string()));
        if let Some(p) = port {
            r.insert("port".into(), Value::from(p));
        }
        r.insert("weight".into(), Value::from(change.weight.unwrap_or(1)));
        if change.drained == Some(true) {
            r.insert("drained".into(), Value::from(true));
        }
        self.reals(id)?.push(Value::Object(r));
        Ok(())
    }

    /// Changes a real server's weight or drains it (`drained: true`) or lets it take new
    /// flows again (`drained: false`).
    pub fn edit_real(
        &mut self,
        id: ServiceId,
        address: IpAddr,
        port: Option<u16>,
        change: &RealChange,
    ) -> Result<(), EditError> {
        let at = self.real_at(id, address, port)?;
        let r = self.reals(id)?[at]
            .as_object_mut()
            .ok_or_else(|| EditError::Invalid("a real is not a mapping".into()))?;
        if let Some(w) = change.weight {
            r.insert("weight".into(), Value::from(w));
        }
        match change.drained {
            Some(true) => {
                r.insert("drained".into(), Value::from(true));
            }
            Some(false) => {
                r.remove("drained");
            }
            None => {}
        }
        Ok(())
    }

    /// Removes a real server from a service.
    pub fn delete_real(
        &mut self,
        id: ServiceId,
        address: IpAddr,
        port: Option<u16>,
    ) -> Result<(), EditError> {
        let at = self.real_at(id, address, port)?;
        self.reals(id)?.remove(at);
        Ok(())
    }
}

fn real_name(id: ServiceId, address: IpAddr, port: u16) -> String {
    format!("real {address} port {port} of {id}")
}

fn field_address(v: &Value, key: &str) -> Option<IpAddr> {
    v.get(key)?.as_str()?.parse().ok()
}

fn field_port(v: &Value, key: &str) -> Option<u16> {
    u16::try_from(v.get(key)?.as_u64()?).ok()
}

fn is_service(s: &Value, id: ServiceId) -> bool {
    field_address(s, "address") == Some(id.address)
        && field_port(s, "port") == Some(id.port)
        && s.get("protocol").and_then(Value::as_str) == Some(&id.protocol.to_string())
}

fn is_real(r: &Value, address: IpAddr, port: u16, service_port: u16) -> bool {
    field_address(r, "address") == Some(address)
        && field_port(r, "port").unwrap_or(service_port) == port
}

/// Writes `text` to `path` so that a crash at any moment leaves the old file or the new
/// one whole: a temporary file beside it, fsync, rename over it, fsync of the directory.
pub fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    // A link to the file stays a link: the file it names is replaced.
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let path = path.as_path();
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    // Unique to this write: a temporary file a crash left never blocks the next one.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let name = path
        .file_name()
        .map_or_else(|| "config".into(), |n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(".{name}.xdpvs-{}-{nanos}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        // Keep the original's permissions and owner (a file holding the director's layout).
        if let Ok(meta) = std::fs::metadata(path) {
            file.set_permissions(meta.permissions())?;
            std::os::unix::fs::fchown(&file, Some(meta.uid()), Some(meta.gid()))?;
        }
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
director:
  interfaces: [eth0]
  hash_seed: 7
services:
  - name: web
    address: 192.0.2.100
    port: 80
    protocol: tcp
    scheduler: sh
    reals:
      - {address: 192.0.2.11, weight: 2}
";

    fn web() -> ServiceId {
        ServiceId {
            protocol: Protocol::Tcp,
            address: "192.0.2.100".parse().unwrap_or_else(|e| panic!("{e}")),
            port: 80,
        }
    }

    #[test]
    fn edits_keep_every_other_field_and_validate_as_a_file() {
        let path = Path::new("x.yaml");
        let mut doc = Document::parse(TEXT, path).unwrap_or_else(|e| panic!("{e}"));
        let real: IpAddr = "192.0.2.12".parse().unwrap_or_else(|e| panic!("{e}"));
        doc.add_real(web(), real, None, &RealChange::default())
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            doc.add_real(web(), real, Some(80), &RealChange::default()),
            Err(EditError::Exists(_))
        ));
        doc.edit_real(
            web(),
            real,
            None,
            &RealChange {
                drained: Some(true),
                ..RealChange::default()
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let config = doc.validate(path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.director.hash_seed, 7);
        let reals = &config.services[0].reals;
        assert_eq!(reals.len(), 2);
        assert!(reals[1].drained && reals[1].weight == 1);
        assert_eq!(reals[1].scheduling_weight(), 0);
        // The text round-trips.
        let again = Document::parse(&doc.to_yaml(), path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(again, doc);

        // A weight the file would refuse is refused with the field's name.
        doc.edit_real(
            web(),
            real,
            None,
            &RealChange {
                weight: Some(70000),
                ..RealChange::default()
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let e = doc.validate(path).err().map(|e| e.to_string());
        assert!(
            e.as_deref()
                .is_some_and(|e| e.contains("services[0].reals[1].weight")),
            "{e:?}"
        );
        assert!(matches!(
            doc.delete_service(ServiceId { port: 81, ..web() }),
            Err(EditError::NotFound(_))
        ));
        doc.delete_service(web()).unwrap_or_else(|e| panic!("{e}"));
        assert!(doc.validate(path).is_ok());
    }

    #[test]
    fn an_atomic_write_replaces_the_file_whole() {
        let dir = std::env::temp_dir().join(format!("xdpvs-doc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let path = dir.join("c.yaml");
        std::fs::write(&path, "old").unwrap_or_else(|e| panic!("{e}"));
        write_atomically(&path, "new text").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            std::fs::read_to_string(&path).ok().as_deref(),
            Some("new text")
        );
        // Through a link, the file it names is replaced and the link stays.
        let link = dir.join("link.yaml");
        std::os::unix::fs::symlink(&path, &link).unwrap_or_else(|e| panic!("{e}"));
        write_atomically(&link, "newer").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            std::fs::read_to_string(&path).ok().as_deref(),
            Some("newer")
        );
        assert!(std::fs::symlink_metadata(&link).is_ok_and(|m| m.file_type().is_symlink()));
        let left: Vec<_> = std::fs::read_dir(&dir)
            .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert_eq!(left.len(), 2, "{left:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
