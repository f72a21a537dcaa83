//! The tensors of a file written by Python's `torch.save` (a `.pth` state dict), without
//! Python: both of its formats, the zip archive (PyTorch >= 1.6) and the legacy stream that
//! torchvision's published weights use (`resnet152-b121ed2d.pth`, 2017).
//!
//! A state dict is a pickle whose tensors are `torch._utils._rebuild_tensor_v2(storage,
//! offset, size, stride, ...)` calls and whose storages are "persistent ids" pointing at raw
//! little-endian data (zip: `<root>/data/<key>`; legacy: after the pickle, in sorted key order,
//! each behind its element count). This reads the pickle opcodes that such files use and builds
//! no Python object other than dicts, lists, tuples and tensors; anything else (a pickled
//! `nn.Module`, a numpy array) is an error naming it. libtorch's own unpickler reads neither
//! an `OrderedDict` with `_metadata` (every `state_dict()`) nor the legacy format.
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use tch::{Kind, Tensor};

/// The named tensors of a `torch.save` file, nested dicts flattened with dotted keys
/// (`{"state_dict": {"conv1.weight": ..}}` gives `state_dict.conv1.weight`), in file order.
pub fn load(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse(&bytes).with_context(|| format!("{}: not a PyTorch state dict (a file of torch.save(model.state_dict()))", path.display()))
}

/// As [`load`], from the file's bytes.
pub fn parse(bytes: &[u8]) -> Result<Vec<(String, Tensor)>> {
    if bytes.starts_with(b"PK\x03\x04") {
        from_zip(bytes)
    } else {
        from_legacy(bytes)
    }
}

fn from_zip(bytes: &[u8]) -> Result<Vec<(String, Tensor)>> {
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).context("damaged zip archive")?;
    let pkl = zip.file_names().find(|n| n.ends_with("/data.pkl") || *n == "data.pkl").map(str::to_string).context("no data.pkl in the archive")?;
    let root = pkl.strip_suffix("data.pkl").unwrap_or("").to_string();
    let mut program = Vec::new();
    zip.by_name(&pkl)?.read_to_end(&mut program)?;
    let value = Machine::new(&program).run()?;
    let mut storages = HashMap::new();
    let mut out = Vec::new();
    flatten(&value, "", &mut |name, t| {
        if !storages.contains_key(&t.storage.key) {
            let mut data = Vec::new();
            let entry = format!("{root}data/{}", t.storage.key);
            zip.by_name(&entry).with_context(|| format!("the archive lacks {entry}"))?.read_to_end(&mut data)?;
            storages.insert(t.storage.key.clone(), data);
        }
        out.push((name, t.build(&storages[&t.storage.key])?));
        Ok(())
    })?;
    Ok(out)
}

/// Legacy: pickles of the magic number, the protocol version, system info, the object, the
/// sorted storage keys; then each storage as an i64 element count and its bytes.
fn from_legacy(bytes: &[u8]) -> Result<Vec<(String, Tensor)>> {
    let mut m = Machine::new(bytes);
    let magic = m.run().context("neither a zip archive nor a legacy torch.save stream")?;
    if !matches!(magic, Value::BigInt) {
        bail!("neither a zip archive nor a legacy torch.save stream (no magic number)");
    }
    m.reset();
    let _protocol = m.run()?;
    m.reset();
    let _sys_info = m.run()?;
    m.reset();
    let value = m.run()?;
    m.reset();
    let keys = match m.run()? {
        Value::List(k) => k.into_iter().map(|k| k.string()).collect::<Result<Vec<_>>>()?,
        _ => bail!("the storage key list is not a list"),
    };
    let mut pos = m.pos;
    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    let mut sizes = HashMap::new();
    flatten(&value, "", &mut |_, t| {
        sizes.insert(t.storage.key.clone(), element_size(t.storage.kind)?);
        Ok(())
    })?;
    for key in keys {
        let count = i64::from_le_bytes(bytes.get(pos..pos.saturating_add(8)).context("truncated file (a storage's size)")?.try_into()?);
        let elem = *sizes.get(&key).unwrap_or(&1);
        let len = usize::try_from(count).ok().and_then(|n| n.checked_mul(elem)).with_context(|| format!("storage {key}: impossible size {count}"))?;
        let end = (pos + 8).checked_add(len).with_context(|| format!("storage {key}: impossible size {count}"))?;
        let data = bytes.get(pos + 8..end).with_context(|| format!("truncated file (storage {key})"))?;
        storages.insert(key, data.to_vec());
        pos = end;
    }
    let mut out = Vec::new();
    flatten(&value, "", &mut |name, t| {
        let data = storages.get(&t.storage.key).with_context(|| format!("storage {} is missing from the file", t.storage.key))?;
        out.push((name, t.build(data)?));
        Ok(())
    })?;
    Ok(out)
}

fn flatten(v: &Value, prefix: &str, f: &mut dyn FnMut(String, &TensorRef) -> Result<()>) -> Result<()> {
    if prefix.matches('.').count() > 64 {
        bail!("dicts nested more than 64 deep");
    }
    match v {
        Value::Tensor(t) => f(prefix.to_string(), t),
        Value::Dict(items) => {
            for (k, v) in items {
                let key = match k {
                    Value::Str(s) => s.clone(),
                    Value::Int(i) => i.to_string(),
                    _ => continue,
                };
                flatten(v, &if prefix.is_empty() { key } else { format!("{prefix}.{key}") }, f)?;
            }
            Ok(())
        }
        Value::Object(name) if prefix.is_empty() => bail!("the file holds a pickled `{name}`, not a dict of tensors; save model.state_dict() instead"),
        _ => Ok(()),
    }
}

fn element_size(kind: Kind) -> Result<usize> {
    Ok(match kind {
        Kind::Double | Kind::Int64 => 8,
        Kind::Float | Kind::Int => 4,
        Kind::Half | Kind::BFloat16 | Kind::Int16 => 2,
        Kind::Uint8 | Kind::Int8 | Kind::Bool => 1,
        k => bail!("tensors of type {k:?} are not supported"),
    })
}

fn storage_kind(name: &str) -> Result<Kind> {
    Ok(match name {
        "FloatStorage" => Kind::Float,
        "DoubleStorage" => Kind::Double,
        "HalfStorage" => Kind::Half,
        "BFloat16Storage" => Kind::BFloat16,
        "LongStorage" => Kind::Int64,
        "IntStorage" => Kind::Int,
        "ShortStorage" => Kind::Int16,
        "CharStorage" => Kind::Int8,
        "ByteStorage" => Kind::Uint8,
        "BoolStorage" => Kind::Bool,
        _ => bail!("unsupported storage type torch.{name}"),
    })
}

#[derive(Debug, Clone)]
struct StorageRef {
    key: String,
    kind: Kind,
}

#[derive(Debug, Clone)]
struct TensorRef {
    storage: StorageRef,
    offset: i64,
    size: Vec<i64>,
    stride: Vec<i64>,
}

impl TensorRef {
    fn build(&self, data: &[u8]) -> Result<Tensor> {
        let elem = element_size(self.storage.kind)?;
        let numel = (data.len() / elem) as i64;
        let bad = || anyhow::anyhow!("a tensor of shape {:?}, strides {:?}, offset {} does not fit its storage ({numel} elements)", self.size, self.stride, self.offset);
        if self.size.len() != self.stride.len() || self.offset < 0 || self.size.iter().chain(&self.stride).any(|&v| v < 0) {
            return Err(bad());
        }
        // More elements than the storage holds (a zero stride repeating one value a trillion
        // times) would be allocated by `contiguous()` below: refused before.
        let elements = self.size.iter().try_fold(1i64, |a, &n| a.checked_mul(n)).ok_or_else(bad)?;
        if elements > numel {
            return Err(bad());
        }
        if self.size.iter().all(|&n| n > 0) {
            let mut last = self.offset;
            for (&n, &s) in self.size.iter().zip(&self.stride) {
                last = (n - 1).checked_mul(s).and_then(|d| last.checked_add(d)).ok_or_else(bad)?;
            }
            if last >= numel {
                return Err(bad());
            }
        }
        let storage = Tensor::from_data_size(data, &[numel], self.storage.kind);
        Ok(storage.as_strided(self.size.as_slice(), self.stride.as_slice(), self.offset).contiguous())
    }
}

#[derive(Debug, Clone)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer beyond i64 (the legacy format's magic number 0x1950a86a20f9469cfc6c).
    BigInt,
    Float,
    Str(String),
    Bytes,
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global(String, String),
    Storage(StorageRef),
    Tensor(TensorRef),
    /// Any other object, by its class or function's name.
    Object(String),
    Mark,
}

impl Value {
    fn int(&self) -> Result<i64> {
        match self {
            Value::Int(i) => Ok(*i),
            Value::Bool(b) => Ok(*b as i64),
            v => bail!("expected an integer, found {v:?}"),
        }
    }
    fn ints(&self) -> Result<Vec<i64>> {
        match self {
            Value::Tuple(v) | Value::List(v) => v.iter().map(Value::int).collect(),
            v => bail!("expected a tuple of integers, found {v:?}"),
        }
    }
    fn string(self) -> Result<String> {
        match self {
            Value::Str(s) => Ok(s),
            v => bail!("expected a string, found {v:?}"),
        }
    }
}

/// The pickle virtual machine, for the opcodes of protocols 2-5 that `torch.save` emits.
struct Machine<'a> {
    code: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    memo: HashMap<u32, Value>,
}

impl<'a> Machine<'a> {
    fn new(code: &'a [u8]) -> Self {
        Self { code, pos: 0, stack: Vec::new(), memo: HashMap::new() }
    }
    fn reset(&mut self) {
        self.stack.clear();
        self.memo.clear();
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let s = self.code.get(self.pos..self.pos + n).context("truncated pickle")?;
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into()?))
    }
    fn line(&mut self) -> Result<String> {
        let rest = &self.code[self.pos..];
        let end = rest.iter().position(|&b| b == b'\n').context("truncated pickle")?;
        self.pos += end + 1;
        Ok(String::from_utf8_lossy(&rest[..end]).into_owned())
    }
    fn pop(&mut self) -> Result<Value> {
        self.stack.pop().context("pickle stack underflow")
    }
    fn pop_mark(&mut self) -> Result<Vec<Value>> {
        let at = self.stack.iter().rposition(|v| matches!(v, Value::Mark)).context("pickle MARK missing")?;
        let items = self.stack.split_off(at + 1);
        self.stack.pop();
        Ok(items)
    }
    fn top(&mut self) -> Result<&mut Value> {
        self.stack.last_mut().context("pickle stack underflow")
    }
    fn str(&mut self, n: usize) -> Result<Value> {
        Ok(Value::Str(String::from_utf8_lossy(self.take(n)?).into_owned()))
    }

    /// Runs one pickle to its STOP and returns its value.
    fn run(&mut self) -> Result<Value> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    self.u8()?; // PROTO
                }
                0x95 => {
                    self.take(8)?; // FRAME
                }
                b'.' => return self.pop(),
                b'(' => self.stack.push(Value::Mark),
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'J' => {
                    let v = i32::from_le_bytes(self.take(4)?.try_into()?);
                    self.stack.push(Value::Int(v as i64))
                }
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(Value::Int(v as i64))
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.take(2)?.try_into()?);
                    self.stack.push(Value::Int(v as i64))
                }
                0x8a => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?;
                    let v = if n <= 8 {
                        let mut buf = [if b.last().is_some_and(|&x| x & 0x80 != 0) { 0xff } else { 0 }; 8];
                        buf[..n].copy_from_slice(b);
                        Value::Int(i64::from_le_bytes(buf))
                    } else {
                        Value::BigInt
                    };
                    self.stack.push(v)
                }
                b'G' => {
                    self.take(8)?;
                    self.stack.push(Value::Float)
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let v = self.str(n)?;
                    self.stack.push(v)
                }
                0x8c | b'U' => {
                    let n = self.u8()? as usize;
                    let v = self.str(n)?;
                    self.stack.push(v)
                }
                b'T' => {
                    let n = self.u32()? as usize;
                    let v = self.str(n)?;
                    self.stack.push(v)
                }
                b'C' => {
                    let n = self.u8()? as usize;
                    self.take(n)?;
                    self.stack.push(Value::Bytes)
                }
                b'B' => {
                    let n = self.u32()? as usize;
                    self.take(n)?;
                    self.stack.push(Value::Bytes)
                }
                b')' => self.stack.push(Value::Tuple(Vec::new())),
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Tuple(items))
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let at = self.stack.len().checked_sub(n).context("pickle stack underflow")?;
                    let items = self.stack.split_off(at);
                    self.stack.push(Value::Tuple(items))
                }
                b']' => self.stack.push(Value::List(Vec::new())),
                b'l' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::List(items))
                }
                b'}' => self.stack.push(Value::Dict(Vec::new())),
                b'd' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Dict(pairs(items)))
                }
                b'a' => {
                    let v = self.pop()?;
                    if let Value::List(l) = self.top()? {
                        l.push(v)
                    }
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    if let Value::List(l) = self.top()? {
                        l.extend(items)
                    }
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    if let Value::Dict(d) = self.top()? {
                        d.push((k, v))
                    }
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    if let Value::Dict(d) = self.top()? {
                        d.extend(pairs(items))
                    }
                }
                b'q' => {
                    let i = self.u8()? as u32;
                    let v = self.top()?.clone();
                    self.memo.insert(i, v);
                }
                b'r' => {
                    let i = self.u32()?;
                    let v = self.top()?.clone();
                    self.memo.insert(i, v);
                }
                0x94 => {
                    let (i, v) = (self.memo.len() as u32, self.top()?.clone());
                    self.memo.insert(i, v);
                }
                b'h' => {
                    let i = self.u8()? as u32;
                    let v = self.memo.get(&i).cloned().context("pickle memo entry missing")?;
                    self.stack.push(v)
                }
                b'j' => {
                    let i = self.u32()?;
                    let v = self.memo.get(&i).cloned().context("pickle memo entry missing")?;
                    self.stack.push(v)
                }
                b'c' => {
                    let (module, name) = (self.line()?, self.line()?);
                    self.stack.push(Value::Global(module, name))
                }
                0x93 => {
                    let name = self.pop()?.string()?;
                    let module = self.pop()?.string()?;
                    self.stack.push(Value::Global(module, name))
                }
                b'Q' => {
                    let pid = self.pop()?;
                    self.stack.push(persistent(pid)?)
                }
                b'R' | 0x81 => {
                    let args = self.pop()?;
                    let f = self.pop()?;
                    self.stack.push(call(f, args)?)
                }
                b'b' => {
                    // BUILD sets an object's state: OrderedDict's `_metadata`, a parameter's
                    // hooks. Tensors and dicts keep what they have.
                    self.pop()?;
                }
                _ => bail!("unsupported pickle opcode 0x{op:02x} at byte {}", self.pos - 1),
            }
        }
    }
}

fn pairs(items: Vec<Value>) -> Vec<(Value, Value)> {
    let mut it = items.into_iter();
    let mut out = Vec::new();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    out
}

/// A persistent id: `('storage', torch.FloatStorage, key, location, numel[, view])`.
fn persistent(pid: Value) -> Result<Value> {
    let Value::Tuple(items) = pid else { bail!("unexpected persistent id {pid:?}") };
    match items.as_slice() {
        [Value::Str(tag), _, _, _, _, view] if tag == "storage" && !matches!(view, Value::None) => {
            bail!("storage views (legacy torch.save of tensors sharing memory) are not supported; re-save the state dict with a recent PyTorch")
        }
        [Value::Str(tag), Value::Global(_, ty), Value::Str(key), ..] if tag == "storage" => {
            Ok(Value::Storage(StorageRef { key: key.clone(), kind: storage_kind(ty)? }))
        }
        _ => bail!("unexpected persistent id {items:?}"),
    }
}

/// Functions and classes a pickle may call that only build data, named as `module.name`:
/// those torch.load(weights_only=True) allows. Their results other than tensors and dicts
/// are kept as opaque objects; nothing is ever run.
const DATA_ONLY: &[&str] = &[
    "collections.Counter",
    "collections.defaultdict",
    "builtins.set",
    "builtins.frozenset",
    "builtins.bytearray",
    "builtins.complex",
    "builtins.slice",
    "_codecs.encode",
    "torch.Size",
    "torch.device",
    "torch.serialization._get_layout",
    "torch._tensor._rebuild_from_type_v2",
];

/// REDUCE and NEWOBJ: the calls a state dict makes. Any call outside them and [`DATA_ONLY`]
/// (`os.system`, `builtins.eval`, ...) is refused by name.
fn call(f: Value, args: Value) -> Result<Value> {
    let Value::Global(module, name) = f else { bail!("the pickle calls a {f:?}; only tensors and plain containers are read") };
    let args = match args {
        Value::Tuple(a) => a,
        a => vec![a],
    };
    Ok(match (module.as_str(), name.as_str()) {
        ("collections", "OrderedDict") => Value::Dict(Vec::new()),
        ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => {
            let [Value::Storage(s), offset, size, stride, ..] = args.as_slice() else { bail!("unexpected arguments to {module}.{name}: {args:?}") };
            Value::Tensor(TensorRef { storage: s.clone(), offset: offset.int()?, size: size.ints()?, stride: stride.ints()? })
        }
        ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => match args.into_iter().next() {
            Some(t @ Value::Tensor(_)) => t,
            other => bail!("unexpected argument to torch._utils._rebuild_parameter: {other:?}"),
        },
        _ if DATA_ONLY.contains(&format!("{module}.{name}").as_str()) => Value::Object(format!("{module}.{name}")),
        _ => bail!(
            "the pickle calls {module}.{name}; only tensors and plain containers are read (gcl runs no code from a file, as torch.load(weights_only=True) does not)"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// tests/fixtures/pth: a small state dict (convolution, BatchNorm with its `num_batches_tracked`,
    /// linear) saved by torch 2.11 in both formats, and its values as text.
    #[test]
    fn both_formats_give_the_values_torch_saved() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pth");
        let want = std::fs::read_to_string(dir.join("small.txt")).unwrap();
        for file in ["small.pth", "small_legacy.pth"] {
            let got = load(&dir.join(file)).unwrap();
            let lines: Vec<&str> = want.lines().collect();
            assert_eq!(got.len(), lines.len(), "{file}");
            for ((name, t), line) in got.iter().zip(lines) {
                let mut parts = line.splitn(2, ' ');
                assert_eq!(name, parts.next().unwrap(), "{file}");
                let rest = parts.next().unwrap();
                let (shape, values) = rest.split_once("] ").map_or((rest, ""), |(a, b)| (a, b));
                let shape: Vec<i64> = shape.trim_start_matches('[').split(", ").filter(|s| !s.is_empty()).map(|s| s.parse().unwrap()).collect();
                assert_eq!(t.size(), shape, "{file}: {name}");
                let values: Vec<f64> = values.split(' ').filter(|s| !s.is_empty()).map(|s| s.parse().unwrap()).collect();
                assert_eq!(Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap(), values, "{file}: {name}");
            }
        }
    }

    #[test]
    fn a_pickle_of_nested_containers() {
        // pickle.dumps({'a': [1, (2, 'x')], 'b': None}, protocol=2)
        let code = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01]q\x02(K\x01K\x02X\x01\x00\x00\x00xq\x03\x86q\x04eX\x01\x00\x00\x00bq\x05Nu.";
        let v = Machine::new(code).run().unwrap();
        let Value::Dict(d) = v else { panic!("{v:?}") };
        assert_eq!(d.len(), 2);
        assert!(matches!(&d[0].1, Value::List(l) if l.len() == 2));
    }
}
