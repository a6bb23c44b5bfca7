//! Reads scikit-learn linear classifiers saved with joblib, without Python.
//!
//! A joblib file is a pickle stream in which each numpy array is a `NumpyArrayWrapper` object whose
//! raw bytes follow the pickle opcode that builds it (object arrays follow as a nested pickle). This
//! is a small pickle machine for the opcodes such files use; classes are not imported, they are
//! kept as names with their arguments and state, and read back by name.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use anyhow::{Context, Result, bail, ensure};

/// A decoded pickle value.
#[derive(Clone, Debug)]
#[allow(dead_code)] // Every value is decoded whole; not every kind is read back.
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Rc<Vec<Value>>),
    List(Rc<RefCell<Vec<Value>>>),
    Dict(Rc<RefCell<Vec<(Value, Value)>>>),
    /// A class or function named by `module.name`.
    Global(String),
    /// An instance: its class, the arguments it was made with and the state set on it.
    Object(Rc<RefCell<Object>>),
    /// A numpy array read from the stream.
    Array(Rc<Array>),
    /// Marks the stack for opcodes that take everything above it.
    Mark,
}

/// An instance of a class, not imported.
#[derive(Debug)]
pub struct Object {
    pub class: String,
    pub args: Vec<Value>,
    pub state: Option<Value>,
}

/// A numpy array: its shape and its elements in C order.
#[derive(Debug)]
pub struct Array {
    pub shape: Vec<usize>,
    pub data: ArrayData,
}

/// Array elements, widened to one type per kind.
#[derive(Debug)]
pub enum ArrayData {
    Float(Vec<f64>),
    Int(Vec<i64>),
    Object(Vec<Value>),
}

impl Value {
    /// The entry of a dict (or of an object's state dict) under a string key.
    pub fn get(&self, key: &str) -> Option<Value> {
        match self {
            Value::Dict(items) => items
                .borrow()
                .iter()
                .find(|(k, _)| matches!(k, Value::Str(s) if s == key))
                .map(|(_, v)| v.clone()),
            Value::Object(object) => object.borrow().state.as_ref().and_then(|s| s.get(key)),
            _ => None,
        }
    }

    fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The value as text, for labels: strings as they are, numbers printed.
    pub fn to_label(&self) -> Option<String> {
        match self {
            Value::Str(s) => Some(s.clone()),
            Value::Int(i) => Some(i.to_string()),
            Value::Bool(b) => Some(if *b { "True" } else { "False" }.into()),
            _ => None,
        }
    }
}

/// Decodes a whole joblib (or plain pickle) file.
pub fn load(bytes: &[u8]) -> Result<Value> {
    ensure!(
        !bytes.starts_with(&[0x78]) && !bytes.starts_with(b"ZF") && !bytes.starts_with(&[0x1f, 0x8b]),
        "compressed joblib files are not supported; save it with compress=0"
    );
    let mut reader = Reader { bytes, pos: 0 };
    Machine::default().run(&mut reader)
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end =
            end.with_context(|| format!("truncated pickle: {n} bytes wanted at offset {}", self.pos))?;
        let slice = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(slice)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn line(&mut self) -> Result<String> {
        let rest = &self.bytes[self.pos..];
        let n = rest.iter().position(|&b| b == b'\n').context("truncated pickle: no end of line")?;
        let line = String::from_utf8_lossy(&rest[..n]).into_owned();
        self.pos += n + 1;
        Ok(line)
    }
    fn utf8(&mut self, n: usize) -> Result<Value> {
        Ok(Value::Str(String::from_utf8(self.take(n)?.to_vec()).context("pickle string is not UTF-8")?))
    }
}

#[derive(Default)]
struct Machine {
    stack: Vec<Value>,
    memo: HashMap<u32, Value>,
}

impl Machine {
    fn pop(&mut self) -> Result<Value> {
        self.stack.pop().context("pickle stack underflow")
    }

    fn top(&mut self) -> Result<&mut Value> {
        self.stack.last_mut().context("pickle stack underflow")
    }

    /// Everything above the topmost mark, which is removed.
    fn pop_mark(&mut self) -> Result<Vec<Value>> {
        let at = self.stack.iter().rposition(|v| matches!(v, Value::Mark)).context("pickle: no mark")?;
        let items = self.stack.split_off(at + 1);
        self.stack.pop();
        Ok(items)
    }

    fn run(mut self, r: &mut Reader) -> Result<Value> {
        loop {
            let opcode = r.u8()?;
            match opcode {
                0x80 => drop(r.u8()?),                // PROTO
                0x95 => drop(r.u64()?),               // FRAME: frames are only a buffering hint
                b'.' => return self.pop(),            // STOP
                b'(' => self.stack.push(Value::Mark), // MARK
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'J' => self.stack.push(Value::Int(r.u32()? as i32 as i64)),
                b'K' => self.stack.push(Value::Int(r.u8()? as i64)),
                b'M' => {
                    self.stack.push(Value::Int(u16::from_le_bytes(r.take(2)?.try_into().unwrap()) as i64))
                }
                0x8a => {
                    // LONG1: little-endian two's complement of n bytes.
                    let n = r.u8()? as usize;
                    ensure!(n <= 8, "pickle integer wider than 64 bits");
                    let bytes = r.take(n)?;
                    let mut value: i64 = 0;
                    for (i, b) in bytes.iter().enumerate() {
                        value |= (*b as i64) << (8 * i);
                    }
                    if n > 0 && n < 8 && bytes[n - 1] & 0x80 != 0 {
                        value -= 1i64 << (8 * n);
                    }
                    self.stack.push(Value::Int(value));
                }
                b'G' => self.stack.push(Value::Float(f64::from_be_bytes(r.take(8)?.try_into().unwrap()))),
                0x8c => {
                    let n = r.u8()? as usize;
                    self.stack.push(r.utf8(n)?)
                }
                b'X' => {
                    let n = r.u32()? as usize;
                    self.stack.push(r.utf8(n)?)
                }
                0x8d => {
                    let n = r.u64()? as usize;
                    self.stack.push(r.utf8(n)?)
                }
                b'U' => {
                    let n = r.u8()? as usize;
                    self.stack.push(Value::Str(String::from_utf8_lossy(r.take(n)?).into_owned()))
                }
                b'C' => {
                    let n = r.u8()? as usize;
                    self.stack.push(Value::Bytes(r.take(n)?.to_vec()))
                }
                b'B' => {
                    let n = r.u32()? as usize;
                    self.stack.push(Value::Bytes(r.take(n)?.to_vec()))
                }
                0x8e => {
                    let n = r.u64()? as usize;
                    self.stack.push(Value::Bytes(r.take(n)?.to_vec()))
                }
                b'}' => self.stack.push(Value::Dict(Default::default())),
                b']' => self.stack.push(Value::List(Default::default())),
                b')' => self.stack.push(Value::Tuple(Rc::new(vec![]))),
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Tuple(Rc::new(items)))
                }
                0x85..=0x87 => {
                    let n = (opcode - 0x84) as usize;
                    ensure!(self.stack.len() >= n, "pickle stack underflow");
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.stack.push(Value::Tuple(Rc::new(items)))
                }
                0x94 => {
                    // MEMOIZE: the next free index.
                    let value = self.top()?.clone();
                    let index = self.memo.len() as u32;
                    self.memo.insert(index, value);
                }
                b'q' => {
                    let index = r.u8()? as u32;
                    let value = self.top()?.clone();
                    self.memo.insert(index, value);
                }
                b'r' => {
                    let index = r.u32()?;
                    let value = self.top()?.clone();
                    self.memo.insert(index, value);
                }
                b'h' | b'j' => {
                    let index = if opcode == b'h' { r.u8()? as u32 } else { r.u32()? };
                    let value = self.memo.get(&index).with_context(|| format!("pickle: no memo {index}"))?;
                    self.stack.push(value.clone())
                }
                b'c' => {
                    let module = r.line()?;
                    let name = r.line()?;
                    self.stack.push(Value::Global(format!("{module}.{name}")))
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module.as_str(), name.as_str()) {
                        (Some(m), Some(n)) => self.stack.push(Value::Global(format!("{m}.{n}"))),
                        _ => bail!("pickle: STACK_GLOBAL needs two strings"),
                    }
                }
                b'R' | 0x81 => {
                    // REDUCE (callable, args) and NEWOBJ (class, args): both become an object.
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let Value::Global(class) = callable else { bail!("pickle: call of a non-global") };
                    let Value::Tuple(args) = args else { bail!("pickle: call arguments are not a tuple") };
                    self.stack.push(Value::Object(Rc::new(RefCell::new(Object {
                        class,
                        args: args.to_vec(),
                        state: None,
                    }))))
                }
                b'b' => {
                    let state = self.pop()?;
                    let target = self.pop()?;
                    let Value::Object(object) = &target else { bail!("pickle: BUILD on a non-object") };
                    object.borrow_mut().state = Some(state);
                    let class = object.borrow().class.clone();
                    if class.ends_with("NumpyArrayWrapper") {
                        // joblib: the array's bytes follow in the stream.
                        let array = read_wrapped_array(&object.borrow(), r)?;
                        self.stack.push(Value::Array(Rc::new(array)));
                    } else if class.ends_with("multiarray._reconstruct") {
                        let array = reconstructed_array(&object.borrow())?;
                        self.stack.push(Value::Array(Rc::new(array)));
                    } else {
                        self.stack.push(target);
                    }
                }
                b's' => {
                    let value = self.pop()?;
                    let key = self.pop()?;
                    let Value::Dict(items) = self.top()? else { bail!("pickle: SETITEM on a non-dict") };
                    items.borrow_mut().push((key, value));
                }
                b'u' => {
                    let flat = self.pop_mark()?;
                    ensure!(flat.len() % 2 == 0, "pickle: SETITEMS with an odd count");
                    let Value::Dict(items) = self.top()? else { bail!("pickle: SETITEMS on a non-dict") };
                    let mut items = items.borrow_mut();
                    let mut flat = flat.into_iter();
                    while let (Some(k), Some(v)) = (flat.next(), flat.next()) {
                        items.push((k, v));
                    }
                }
                b'a' => {
                    let value = self.pop()?;
                    let Value::List(items) = self.top()? else { bail!("pickle: APPEND on a non-list") };
                    items.borrow_mut().push(value);
                }
                b'e' => {
                    let values = self.pop_mark()?;
                    let Value::List(items) = self.top()? else { bail!("pickle: APPENDS on a non-list") };
                    items.borrow_mut().extend(values);
                }
                b'0' => drop(self.pop()?),
                b'1' => drop(self.pop_mark()?),
                b'2' => {
                    let value = self.top()?.clone();
                    self.stack.push(value)
                }
                other => bail!("unsupported pickle opcode 0x{other:02x} at offset {}", r.pos - 1),
            }
        }
    }
}

/// A numpy dtype object: its kind string ("f8", "O8") and byte order from its state.
fn dtype_of(value: &Value) -> Result<(String, String)> {
    let Value::Object(dtype) = value else { bail!("numpy dtype expected") };
    let dtype = dtype.borrow();
    let kind = dtype.args.first().and_then(Value::as_str).context("numpy dtype without a kind")?.to_string();
    let order = match &dtype.state {
        Some(Value::Tuple(state)) => state.get(1).and_then(Value::as_str).unwrap_or("|").to_string(),
        _ => "|".into(),
    };
    Ok((kind, order))
}

fn shape_of(value: &Value) -> Result<Vec<usize>> {
    let Value::Tuple(items) = value else { bail!("numpy shape is not a tuple") };
    items
        .iter()
        .map(|v| match v {
            Value::Int(n) if *n >= 0 => Ok(*n as usize),
            _ => bail!("numpy shape entry is not a size"),
        })
        .collect()
}

fn read_wrapped_array(wrapper: &Object, r: &mut Reader) -> Result<Array> {
    let state = wrapper.state.as_ref().context("NumpyArrayWrapper without state")?;
    let shape = shape_of(&state.get("shape").context("NumpyArrayWrapper without shape")?)?;
    let (kind, order) = dtype_of(&state.get("dtype").context("NumpyArrayWrapper without dtype")?)?;
    let fortran = state.get("order").and_then(|o| o.as_str().map(|s| s == "F")).unwrap_or(false);
    let count: usize = shape.iter().product();
    if kind.starts_with('O') {
        // Object arrays are pickled as a whole, in a nested stream.
        let Value::Array(array) = Machine::default().run(r)? else { bail!("object array expected") };
        return Ok(Array { shape, data: clone_data(&array.data) });
    }
    if matches!(state.get("numpy_array_alignment_bytes"), Some(Value::Int(_))) {
        let padding = r.u8()? as usize;
        r.take(padding)?;
    }
    ensure!(order != ">", "big-endian arrays are not supported");
    let data = decode_numbers(&kind, r, count)?;
    Ok(Array { shape: shape.clone(), data: if fortran { to_c_order(data, &shape) } else { data } })
}

/// numpy's own pickling: `_reconstruct` then a state of (version, shape, dtype, fortran, data).
fn reconstructed_array(object: &Object) -> Result<Array> {
    let Some(Value::Tuple(state)) = &object.state else { bail!("numpy array without state") };
    ensure!(state.len() == 5, "unexpected numpy array state");
    let shape = shape_of(&state[1])?;
    let (kind, _) = dtype_of(&state[2])?;
    let fortran = matches!(state[3], Value::Bool(true));
    let data = match &state[4] {
        Value::List(items) => ArrayData::Object(items.borrow().clone()),
        Value::Bytes(bytes) => {
            let mut reader = Reader { bytes, pos: 0 };
            decode_numbers(&kind, &mut reader, shape.iter().product())?
        }
        _ => bail!("unexpected numpy array data"),
    };
    Ok(Array { shape: shape.clone(), data: if fortran { to_c_order(data, &shape) } else { data } })
}

fn decode_numbers(kind: &str, r: &mut Reader, count: usize) -> Result<ArrayData> {
    let width: usize = kind[1..].parse().with_context(|| format!("numpy dtype {kind}"))?;
    let bytes = r.take(count.checked_mul(width).context("array too large")?)?;
    let chunks = bytes.chunks_exact(width);
    Ok(match (&kind[..1], width) {
        ("f", 8) => ArrayData::Float(chunks.map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect()),
        ("f", 4) => {
            ArrayData::Float(chunks.map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64).collect())
        }
        ("i", 8) => ArrayData::Int(chunks.map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect()),
        ("i", 4) => {
            ArrayData::Int(chunks.map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64).collect())
        }
        _ => bail!("numpy dtype {kind} is not supported"),
    })
}

fn clone_data(data: &ArrayData) -> ArrayData {
    match data {
        ArrayData::Float(v) => ArrayData::Float(v.clone()),
        ArrayData::Int(v) => ArrayData::Int(v.clone()),
        ArrayData::Object(v) => ArrayData::Object(v.clone()),
    }
}

/// Column-major elements of a 2-D array, reordered to row-major.
fn to_c_order(data: ArrayData, shape: &[usize]) -> ArrayData {
    let [rows, cols] = shape[..] else { return data };
    let reorder = |v: &[f64]| (0..rows * cols).map(|i| v[(i % cols) * rows + i / cols]).collect();
    match data {
        ArrayData::Float(v) => ArrayData::Float(reorder(&v)),
        other => other,
    }
}

/// A scikit-learn linear classifier: decision = x · coefᵀ + intercept, one column per class.
#[derive(Debug)]
pub struct LinearClassifier {
    /// The estimator's class name, e.g. `LogisticRegression`.
    pub estimator: String,
    /// Row-major `[classes, features]`.
    pub coef: Vec<f64>,
    pub intercept: Vec<f64>,
    pub classes: Vec<String>,
    pub features: usize,
}

impl LinearClassifier {
    /// Reads `coef_`, `intercept_` and `classes_` from a fitted linear estimator.
    pub fn from_joblib(bytes: &[u8]) -> Result<Self> {
        let model = load(bytes)?;
        let Value::Object(object) = &model else { bail!("the joblib file does not hold an estimator") };
        let estimator = object.borrow().class.rsplit('.').next().unwrap_or_default().to_string();
        let array = |name: &str| -> Result<Rc<Array>> {
            match model.get(name) {
                Some(Value::Array(a)) => Ok(a),
                _ => bail!("{estimator} has no array {name} (is it a fitted linear classifier?)"),
            }
        };
        let (coef, intercept, classes) = (array("coef_")?, array("intercept_")?, array("classes_")?);
        let (ArrayData::Float(coef_values), ArrayData::Float(intercept_values)) =
            (&coef.data, &intercept.data)
        else {
            bail!("{estimator}: coef_ and intercept_ must be float arrays");
        };
        let classes: Vec<String> = match &classes.data {
            ArrayData::Object(values) => values
                .iter()
                .map(|v| v.to_label().context("class label is not a string or integer"))
                .collect(),
            ArrayData::Int(values) => Ok(values.iter().map(i64::to_string).collect()),
            ArrayData::Float(_) => bail!("{estimator}: float class labels are not supported"),
        }?;
        let [rows, features] = coef.shape[..] else { bail!("{estimator}: coef_ is not 2-D") };
        ensure!(intercept_values.len() == rows, "{estimator}: intercept_ does not match coef_");
        if rows == 1 && classes.len() == 2 {
            // Binary: one decision value z for the second class. Scores (-z/2, z/2) have the same
            // softmax as the estimator's sigmoid probabilities.
            let half: Vec<f64> = coef_values.iter().map(|v| v / 2.0).collect();
            let coef = half.iter().map(|v| -v).chain(half.iter().copied()).collect();
            let b = intercept_values[0] / 2.0;
            return Ok(Self { estimator, coef, intercept: vec![-b, b], classes, features });
        }
        ensure!(rows == classes.len(), "{estimator}: {rows} coefficient rows for {} classes", classes.len());
        Ok(Self {
            estimator,
            coef: coef_values.clone(),
            intercept: intercept_values.clone(),
            classes,
            features,
        })
    }
}

/// Reads a label map saved with joblib (a dict from class to display name).
pub fn label_map(bytes: &[u8]) -> Result<HashMap<String, String>> {
    let Value::Dict(items) = load(bytes)? else { bail!("the label map is not a dict") };
    let items = items.borrow();
    items
        .iter()
        .map(|(k, v)| Ok((k.to_label().context("label map key")?, v.to_label().context("label map value")?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_opcodes_of_a_protocol_4_dict() {
        // pickle.dumps({'a': [1, -2, 3.5, None, True], 'b': (b'x', 'é')}, protocol=4)
        let bytes = b"\x80\x04\x95.\x00\x00\x00\x00\x00\x00\x00}\x94(\x8c\x01a\x94]\x94(K\x01J\xfe\xff\xff\xffG@\x0c\x00\x00\x00\x00\x00\x00N\x88e\x8c\x01b\x94C\x01x\x94\x8c\x02\xc3\xa9\x94\x86\x94u.";
        let value = load(bytes).unwrap();
        let Some(Value::List(a)) = value.get("a") else { panic!("{value:?}") };
        let a = a.borrow();
        assert!(
            matches!(a[..], [Value::Int(1), Value::Int(-2), Value::Float(f), Value::None, Value::Bool(true)] if f == 3.5)
        );
        let Some(Value::Tuple(b)) = value.get("b") else { panic!() };
        assert!(matches!(&b[..], [Value::Bytes(x), Value::Str(s)] if x == b"x" && s == "é"));
    }

    #[test]
    fn truncated_and_unknown_input_is_an_error_not_a_panic() {
        assert!(load(b"\x80\x04\x8c\x05ab").is_err());
        assert!(load(b"\x80\x04\xff").is_err());
        assert!(load(b"").is_err());
        assert!(load(b"\x80\x04s.").is_err());
    }
}
