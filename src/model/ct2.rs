//! Reader for CTranslate2's `model.bin` (binary versions 1–6).
//!
//! The file is a flat sequence of named tensors with no alignment and no
//! padding (see `shared/docs/ct2-whisper-format.md` §2). We read it with a
//! buffered reader instead of memory-mapping it, each tensor's payload into
//! its own vector (checked against the file's length before allocating), and
//! decode every unaligned value with `from_le_bytes` rather than
//! reinterpreting it in place. The whole file is held until the model has
//! converted its tensors: peak memory while loading is the file plus the
//! converted weights.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use half::{bf16, f16};

/// Everything that can be wrong with a model file, each naming the file.
#[derive(Debug, thiserror::Error)]
pub enum Ct2Error {
    #[error("{path}: cannot read: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: truncated: the file ends inside {what} (at byte {offset})")]
    Truncated { path: PathBuf, what: String, offset: u64 },
    #[error("{path}: not a CTranslate2 model: {reason}")]
    Format { path: PathBuf, reason: String },
    #[error("{path}: missing tensor `{name}` (is this a CTranslate2 Whisper model?)")]
    Missing { path: PathBuf, name: String },
    #[error("{path}: tensor `{name}` has shape {found:?}, expected {expected}")]
    Shape { path: PathBuf, name: String, found: Vec<usize>, expected: String },
    #[error("{path}: tensor `{name}` contains NaN or infinite values")]
    NotFinite { path: PathBuf, name: String },
}

/// Element storage of one tensor as it was found in the file. Floating-point
/// types are kept in their stored precision; the model decides what to widen.
#[derive(Debug, Clone)]
pub enum TensorData {
    F32(Vec<f32>),
    F16(Vec<f16>),
    Bf16(Vec<bf16>),
    I8(Vec<i8>),
    I16(Vec<i16>),
    I32(Vec<i32>),
}

/// One named tensor of `model.bin`, row-major.
#[derive(Debug, Clone)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: TensorData,
}

impl Tensor {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Widens any element type to f32 (int8 weights are returned unscaled).
    pub fn to_f32(&self) -> Vec<f32> {
        match &self.data {
            TensorData::F32(v) => v.clone(),
            TensorData::F16(v) => v.iter().map(|x| x.to_f32()).collect(),
            TensorData::Bf16(v) => v.iter().map(|x| x.to_f32()).collect(),
            TensorData::I8(v) => v.iter().map(|&x| x as f32).collect(),
            TensorData::I16(v) => v.iter().map(|&x| x as f32).collect(),
            TensorData::I32(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }

    /// The value of a rank-0 integer attribute such as `encoder/num_heads`.
    pub fn scalar_i64(&self) -> Option<i64> {
        if self.len() != 1 {
            return None;
        }
        Some(match &self.data {
            TensorData::I8(v) => v[0] as i64,
            TensorData::I16(v) => v[0] as i64,
            TensorData::I32(v) => v[0] as i64,
            TensorData::F32(v) => v[0] as i64,
            TensorData::F16(v) => v[0].to_f32() as i64,
            TensorData::Bf16(v) => v[0].to_f32() as i64,
        })
    }

    fn all_finite(&self) -> bool {
        match &self.data {
            TensorData::F32(v) => v.iter().all(|x| x.is_finite()),
            TensorData::F16(v) => v.iter().all(|x| x.is_finite()),
            TensorData::Bf16(v) => v.iter().all(|x| x.is_finite()),
            _ => true,
        }
    }
}

/// All variables of one `model.bin`, by name, aliases resolved.
#[derive(Debug)]
pub struct Ct2File {
    pub path: PathBuf,
    pub spec_name: String,
    pub spec_revision: u32,
    tensors: HashMap<String, Tensor>,
    /// Alias name → target name (CT2 stores tied weights once).
    aliases: HashMap<String, String>,
}

/// Largest tensor we accept: guards against a corrupt header asking us to
/// allocate terabytes before noticing the file is too short.
const MAX_TENSOR_BYTES: u64 = 8 << 30;

impl Ct2File {
    /// Reads and validates `path`. Tensors are checked for NaN/Inf so that a
    /// corrupted file fails here, by name, rather than as garbage text later.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, Ct2Error> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|source| Ct2Error::Io { path: path.clone(), source })?;
        let file_len = file.metadata().map_err(|source| Ct2Error::Io { path: path.clone(), source })?.len();
        let mut r = Cursor { inner: BufReader::with_capacity(1 << 20, file), pos: 0, path: &path, file_len };

        let version = r.u32("the header")?;
        if version == 0 || version > 6 {
            return Err(r.format(format!("binary version {version} (expected 1 to 6)")));
        }
        let (spec_name, spec_revision) =
            if version >= 2 { (r.string("the spec name")?, r.u32("the header")?) } else { (String::new(), 1) };
        let count = r.u32("the header")?;
        // The count comes from the file: do not let a corrupt one size an allocation.
        let mut tensors = HashMap::with_capacity((count as usize).min(4096));
        for _ in 0..count {
            let (name, tensor) = r.tensor(version)?;
            if !tensor.all_finite() {
                return Err(Ct2Error::NotFinite { path: path.clone(), name });
            }
            tensors.insert(name, tensor);
        }
        let aliases = if version >= 3 { r.aliases(&tensors)? } else { HashMap::new() };
        if r.pos != file_len {
            return Err(r.format(format!("{} unexpected bytes after the last record", file_len - r.pos)));
        }
        Ok(Ct2File { path, spec_name, spec_revision, tensors, aliases })
    }

    pub fn get(&self, name: &str) -> Result<&Tensor, Ct2Error> {
        let target = self.aliases.get(name).map(String::as_str).unwrap_or(name);
        self.tensors.get(target).ok_or_else(|| Ct2Error::Missing { path: self.path.clone(), name: name.to_string() })
    }

    /// Like [`get`](Self::get) but also checks the shape.
    pub fn get_shaped(&self, name: &str, shape: &[usize]) -> Result<&Tensor, Ct2Error> {
        let t = self.get(name)?;
        if t.shape != shape {
            return Err(Ct2Error::Shape {
                path: self.path.clone(),
                name: name.to_string(),
                found: t.shape.clone(),
                expected: format!("{shape:?}"),
            });
        }
        Ok(t)
    }

    pub fn scalar(&self, name: &str) -> Result<i64, Ct2Error> {
        let t = self.get(name)?;
        t.scalar_i64().ok_or_else(|| Ct2Error::Shape {
            path: self.path.clone(),
            name: name.to_string(),
            found: t.shape.clone(),
            expected: "a scalar".into(),
        })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name) || self.aliases.contains_key(name)
    }

    /// Every variable name, aliases included.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().chain(self.aliases.keys()).map(String::as_str)
    }
}

fn decode_payload(code: u8, b: &[u8]) -> TensorData {
    match code {
        0 => TensorData::F32(b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()),
        1 => TensorData::I8(b.iter().map(|&x| x as i8).collect()),
        2 => TensorData::I16(b.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]])).collect()),
        3 => TensorData::I32(b.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()),
        4 => TensorData::F16(b.chunks_exact(2).map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]]))).collect()),
        5 => TensorData::Bf16(b.chunks_exact(2).map(|c| bf16::from_bits(u16::from_le_bytes([c[0], c[1]]))).collect()),
        _ => unreachable!("codes are validated before decoding"),
    }
}

/// Little-endian reader that knows where it is, for error messages.
struct Cursor<'p, R> {
    inner: R,
    pos: u64,
    path: &'p Path,
    file_len: u64,
}

impl<R: Read> Cursor<'_, R> {
    fn format(&self, reason: String) -> Ct2Error {
        Ct2Error::Format { path: self.path.to_path_buf(), reason }
    }

    fn fill(&mut self, buf: &mut [u8], what: &str) -> Result<(), Ct2Error> {
        if self.pos + buf.len() as u64 > self.file_len {
            return Err(Ct2Error::Truncated {
                path: self.path.to_path_buf(),
                what: what.to_string(),
                offset: self.file_len,
            });
        }
        self.inner.read_exact(buf).map_err(|source| Ct2Error::Io { path: self.path.to_path_buf(), source })?;
        self.pos += buf.len() as u64;
        Ok(())
    }

    fn u8(&mut self, what: &str) -> Result<u8, Ct2Error> {
        let mut b = [0; 1];
        self.fill(&mut b, what)?;
        Ok(b[0])
    }

    fn u16(&mut self, what: &str) -> Result<u16, Ct2Error> {
        let mut b = [0; 2];
        self.fill(&mut b, what)?;
        Ok(u16::from_le_bytes(b))
    }

    fn u32(&mut self, what: &str) -> Result<u32, Ct2Error> {
        let mut b = [0; 4];
        self.fill(&mut b, what)?;
        Ok(u32::from_le_bytes(b))
    }

    fn bytes(&mut self, n: usize, what: &str) -> Result<Vec<u8>, Ct2Error> {
        // Check before allocating: a corrupt length must not size a buffer.
        if self.pos + n as u64 > self.file_len {
            return Err(Ct2Error::Truncated {
                path: self.path.to_path_buf(),
                what: what.to_string(),
                offset: self.file_len,
            });
        }
        let mut v = vec![0; n];
        self.fill(&mut v, what)?;
        Ok(v)
    }

    /// One variable record: name, shape, element type, payload. Sizes are
    /// cross-checked before the payload is read, so that a corrupt record
    /// is reported by name instead of misreading everything after it.
    fn tensor(&mut self, version: u32) -> Result<(String, Tensor), Ct2Error> {
        let name = self.string("a variable name")?;
        let rank = self.u8(&name)? as usize;
        let mut shape = Vec::with_capacity(rank);
        for _ in 0..rank {
            shape.push(self.u32(&name)? as usize);
        }
        let elems = shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
            .ok_or_else(|| self.format(format!("`{name}`: shape {shape:?} overflows")))?;
        let (code, num_bytes) = self.data_type(version, &name)?;
        let item = match code {
            0 | 3 => 4,
            2 | 4 | 5 => 2,
            1 => 1,
            _ => return Err(self.format(format!("`{name}`: unknown data type code {code}"))),
        };
        if elems.checked_mul(item) != Some(num_bytes) || num_bytes > MAX_TENSOR_BYTES {
            return Err(
                self.format(format!("`{name}`: {num_bytes} payload bytes for shape {shape:?} of {item}-byte items"))
            );
        }
        let bytes = self.bytes(num_bytes as usize, &name)?;
        let data = decode_payload(code, &bytes);
        Ok((name, Tensor { shape, data }))
    }

    /// The record's data type code and payload size in bytes; binary
    /// versions before 4 store an item size and an element count instead.
    fn data_type(&mut self, version: u32, name: &str) -> Result<(u8, u64), Ct2Error> {
        if version >= 4 {
            let code = self.u8(name)?;
            return Ok((code, self.u32(name)? as u64));
        }
        let item = self.u8(name)?;
        let code = match item {
            4 => 0,
            2 => 2,
            1 => 1,
            _ => return Err(self.format(format!("`{name}`: item size {item}"))),
        };
        Ok((code, self.u32(name)? as u64 * item as u64))
    }

    /// The alias section (binary version 3 on): tied weights stored once,
    /// each alias naming a tensor that must exist.
    fn aliases(&mut self, tensors: &HashMap<String, Tensor>) -> Result<HashMap<String, String>, Ct2Error> {
        let mut aliases = HashMap::new();
        let count = self.u32("the alias section")?;
        for _ in 0..count {
            let alias = self.string("the alias section")?;
            let target = self.string("the alias section")?;
            if !tensors.contains_key(&target) {
                return Err(self.format(format!("alias `{alias}` points to unknown `{target}`")));
            }
            aliases.insert(alias, target);
        }
        Ok(aliases)
    }

    /// u16 length (counting a trailing NUL), then the bytes.
    fn string(&mut self, what: &str) -> Result<String, Ct2Error> {
        let at = self.pos;
        let len = self.u16(what)? as usize;
        if len == 0 {
            return Err(self.format(format!("zero-length string at byte {at}")));
        }
        let raw = self.bytes(len, what)?;
        if raw[len - 1] != 0 {
            return Err(self.format(format!("string at byte {at} is not NUL-terminated")));
        }
        String::from_utf8(raw[..len - 1].to_vec()).map_err(|_| self.format(format!("string at byte {at} is not UTF-8")))
    }
}
