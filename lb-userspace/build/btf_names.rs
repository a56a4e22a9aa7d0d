//! Makes the type names in an eBPF object's BTF acceptable to the kernel. bpf-linker 0.10
//! rewrites Rust names of structs (`Array<u32>` becomes `Array_3C_u32_3E_`) but leaves a
//! union's (`MaybeUninit<u8>`, from aya's globals) and the unit type's (`()`), and the
//! kernel refuses the whole BTF for one such name: then no BTF map (the program's map of
//! maps) can be created. Each byte a C identifier cannot hold becomes `_`, in place, so no
//! offset in the object moves. Section names (DATASEC) keep their dots.

/// Rewrites the names in the `.BTF` section of `object` (an ELF64 little-endian file);
/// returns how many names changed. An object without BTF is left alone.
pub fn sanitize(object: &mut [u8]) -> Result<usize, String> {
    let Some((start, size)) = section(object, ".BTF")? else {
        return Ok(0);
    };
    let btf = object
        .get_mut(start..start + size)
        .ok_or("the .BTF section lies outside the file")?;
    let hdr_len = u32_at(btf, 4)? as usize;
    let (type_off, type_len) = (u32_at(btf, 8)? as usize, u32_at(btf, 12)? as usize);
    let (str_off, str_len) = (u32_at(btf, 16)? as usize, u32_at(btf, 20)? as usize);
    let types = hdr_len + type_off..hdr_len + type_off + type_len;
    let strings = hdr_len + str_off..hdr_len + str_off + str_len;
    let mut names = Vec::new();
    let mut at = types.start;
    while at < types.end {
        let (name, info) = (u32_at(btf, at)?, u32_at(btf, at + 4)?);
        at += 12;
        let (kind, vlen) = ((info >> 24) & 0x1f, (info & 0xffff) as usize);
        if kind != KIND_DATASEC {
            names.push(name as usize);
        }
        at += match kind {
            KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
            KIND_ARRAY => 12,
            KIND_STRUCT | KIND_UNION => {
                for m in 0..vlen {
                    names.push(u32_at(btf, at + 12 * m)? as usize);
                }
                12 * vlen
            }
            KIND_ENUM => {
                for m in 0..vlen {
                    names.push(u32_at(btf, at + 8 * m)? as usize);
                }
                8 * vlen
            }
            KIND_ENUM64 => {
                for m in 0..vlen {
                    names.push(u32_at(btf, at + 12 * m)? as usize);
                }
                12 * vlen
            }
            KIND_FUNC_PROTO => 8 * vlen,
            KIND_DATASEC => 12 * vlen,
            _ => 0,
        };
    }
    let mut changed = 0;
    for name in names {
        let mut i = strings.start + name;
        let first = i;
        let mut touched = false;
        while i < strings.end && btf[i] != 0 {
            let ok = btf[i] == b'_' || btf[i].is_ascii_alphanumeric();
            if !ok || (i == first && btf[i].is_ascii_digit()) {
                btf[i] = b'_';
                touched = true;
            }
            i += 1;
        }
        changed += usize::from(touched);
    }
    Ok(changed)
}

const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_ENUM64: u32 = 19;

fn u32_at(data: &[u8], at: usize) -> Result<u32, String> {
    data.get(at..at + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| format!("truncated at byte {at}"))
}

fn u64_at(data: &[u8], at: usize) -> Result<u64, String> {
    Ok(u64::from(u32_at(data, at)?) | (u64::from(u32_at(data, at + 4)?) << 32))
}

fn u16_at(data: &[u8], at: usize) -> Result<u16, String> {
    data.get(at..at + 2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .ok_or_else(|| format!("truncated at byte {at}"))
}

/// Offset and size of the section called `wanted`.
fn section(object: &[u8], wanted: &str) -> Result<Option<(usize, usize)>, String> {
    if object.get(..6) != Some(&[0x7f, b'E', b'L', b'F', 2, 1][..]) {
        return Err("not an ELF64 little-endian object".into());
    }
    let shoff = u64_at(object, 0x28)? as usize;
    let shentsize = u16_at(object, 0x3a)? as usize;
    let shnum = u16_at(object, 0x3c)? as usize;
    let shstrndx = u16_at(object, 0x3e)? as usize;
    let header = |i: usize| shoff + i * shentsize;
    let names = u64_at(object, header(shstrndx) + 0x18)? as usize;
    for i in 0..shnum {
        let h = header(i);
        let name = names + u32_at(object, h)? as usize;
        let end = object[name..]
            .iter()
            .position(|&b| b == 0)
            .ok_or("unterminated section name")?;
        if &object[name..name + end] == wanted.as_bytes() {
            let offset = u64_at(object, h + 0x18)? as usize;
            let size = u64_at(object, h + 0x20)? as usize;
            return Ok(Some((offset, size)));
        }
    }
    Ok(None)
}
