//! Reading raw envelopes written with another version of `raw_envelope.avsc`.
//!
//! A framed record (Confluent's framing: byte 0, the writer schema's registry id as 4 bytes
//! big-endian, the Avro body) names the schema it was written with. The reader keeps its own
//! schema and reads the body by Avro's resolution rules, which FULL_TRANSITIVE keeps to two
//! cases: a writer field the reader does not know is skipped, and a reader field the writer
//! lacks takes its default. Each writer schema is compiled once into a [`Plan`] (per writer
//! field: read into the reader's slot, or skip a value of its type).
//!
//! Registry ids are immutable (one id, one schema, forever), so the plans are a process-wide
//! cache the Python shell fills (`learn`) with the schemas it fetched from the registry; a
//! bundle naming an id not yet learned is refused before any of it is applied
//! (`unknown_ids`), so the shell can fetch and retry.

use std::collections::{HashMap, HashSet};
use std::sync::{OnceLock, RwLock, RwLockReadGuard};

use serde_json::Value;

/// The first byte of a framed record. A schemaless envelope starts with its instrument's
/// length, never 0 (connectors always write a BASE-QUOTE instrument).
pub const MAGIC: u8 = 0;
/// Magic byte and schema id.
pub const FRAME_HEADER: usize = 5;

/// The reader's fields (the `raw_envelope.avsc` this build decodes into), in slot order.
pub const READER_FIELDS: [(&str, Kind); 8] = [
    ("instrument", Kind::String),
    ("exchange", Kind::String),
    ("symbol", Kind::String),
    ("channel", Kind::String),
    ("receive_time_ns", Kind::Long),
    ("connection_id", Kind::String),
    ("connection_seq", Kind::Long),
    ("payload", Kind::Bytes),
];

/// The Avro type of a reader field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    String,
    Long,
    Bytes,
}

/// A value of a writer field the reader does not know: how many bytes to pass over.
#[derive(Debug, Clone, PartialEq)]
pub enum Skip {
    Null,
    Boolean,
    Varint, // int, long, enum
    Float,
    Double,
    Bytes, // bytes, string
    Fixed(usize),
    Array(Box<Skip>),
    Map(Box<Skip>),
    Union(Vec<Skip>),
    Record(Vec<Skip>),
}

/// One writer field, in the writer's order.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Read(usize), // into the reader's slot
    Skip(Skip),
}

/// How to read records of one writer schema.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub steps: Vec<Step>,
    /// The writer's fields are the reader's, in order: the plain decoder reads the body.
    pub identity: bool,
}

/// A learned id: its plan, or why its records cannot be read (they are dead-lettered).
pub type Learned = Result<Plan, String>;

fn cache() -> &'static RwLock<HashMap<u32, Learned>> {
    static CACHE: OnceLock<RwLock<HashMap<u32, Learned>>> = OnceLock::new();
    CACHE.get_or_init(|| RwLock::new(HashMap::new()))
}

/// The learned plans (read-locked while a frame is decoded).
pub fn plans() -> RwLockReadGuard<'static, HashMap<u32, Learned>> {
    cache()
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Learn the writer schema of registry id `id`: its JSON text, or None when the registry has
/// no schema of that id. Whether its records can be read is decided here, once.
pub fn learn(id: u32, schema: Option<&str>) -> Result<(), String> {
    let learned = match schema {
        Some(text) => compile(text).map_err(|why| {
            format!("writer schema id {id} cannot be read as tickflow.RawEnvelope: {why}")
        }),
        None => Err(format!("the schema registry has no schema with id {id}")),
    };
    let outcome = learned.as_ref().map(|_| ()).map_err(Clone::clone);
    cache()
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .insert(id, learned);
    outcome
}

/// The schema id of a framed record, None for a schemaless one (or one too short to frame:
/// the decoder says why).
#[inline]
pub fn framed_id(value: &[u8]) -> Option<u32> {
    match value {
        [MAGIC, a, b, c, d, ..] => Some(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => None,
    }
}

/// Byte 0 and the schema id (big-endian), appended to `out`: a framed record's header.
pub fn push_frame_header(out: &mut Vec<u8>, schema_id: u32) {
    out.push(MAGIC);
    out.extend_from_slice(&schema_id.to_be_bytes());
}

/// The ids these records name that have not been learned, each once, in first-seen order.
pub fn unknown_ids<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Vec<u32> {
    let plans = plans();
    let mut unknown = Vec::new();
    let mut last_known = None;
    for value in values {
        let Some(id) = framed_id(value) else { continue };
        if last_known == Some(id) {
            continue;
        }
        if plans.contains_key(&id) {
            last_known = Some(id);
        } else if !unknown.contains(&id) {
            unknown.push(id);
        }
    }
    unknown
}

/// Compile a writer schema (its JSON text) into a plan for this build's reader.
pub fn compile(text: &str) -> Result<Plan, String> {
    let schema: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let mut names = Names::default();
    let Value::Object(record) = &schema else {
        return Err("not a record schema".into());
    };
    if record.get("type").and_then(Value::as_str) != Some("record") {
        return Err("not a record schema".into());
    }
    let namespace = record
        .get("namespace")
        .and_then(Value::as_str)
        .unwrap_or("");
    let fields = record
        .get("fields")
        .and_then(Value::as_array)
        .ok_or("a record without fields")?;
    let mut steps = Vec::with_capacity(fields.len());
    let mut read = HashSet::new();
    for field in fields {
        let name = field
            .get("name")
            .and_then(Value::as_str)
            .ok_or("a field without a name")?;
        let ty = field.get("type").ok_or("a field without a type")?;
        match READER_FIELDS.iter().position(|(n, _)| *n == name) {
            Some(slot) => {
                let want = READER_FIELDS[slot].1;
                let got = primitive(ty);
                if got != Some(want) {
                    return Err(format!(
                        "field {name} is {ty} in the writer, {want:?} in the reader"
                    ));
                }
                read.insert(slot);
                steps.push(Step::Read(slot));
            }
            None => steps.push(Step::Skip(names.skip(ty, namespace)?)),
        }
    }
    // the reader's fields have no defaults: a writer must write every one
    if let Some((missing, _)) = READER_FIELDS
        .iter()
        .enumerate()
        .find(|(slot, _)| !read.contains(slot))
        .map(|(_, f)| f)
    {
        return Err(format!(
            "the writer lacks field {missing}, which the reader has no default for"
        ));
    }
    let identity = steps.len() == READER_FIELDS.len()
        && steps.iter().enumerate().all(|(i, s)| *s == Step::Read(i));
    Ok(Plan { steps, identity })
}

fn primitive(ty: &Value) -> Option<Kind> {
    let name = match ty {
        Value::String(s) => s.as_str(),
        Value::Object(o) if o.get("logicalType").is_none() => o.get("type")?.as_str()?,
        _ => return None,
    };
    match name {
        "string" => Some(Kind::String),
        "long" => Some(Kind::Long),
        "bytes" => Some(Kind::Bytes),
        _ => None,
    }
}

/// The named types (records, enums, fixed) defined so far, by full name.
#[derive(Default)]
struct Names {
    defined: HashMap<String, Skip>,
}

fn full_name(name: &str, namespace: &str) -> String {
    if name.contains('.') || namespace.is_empty() {
        name.to_string()
    } else {
        format!("{namespace}.{name}")
    }
}

impl Names {
    fn skip(&mut self, ty: &Value, namespace: &str) -> Result<Skip, String> {
        match ty {
            Value::String(name) => self.named(name, namespace),
            Value::Array(branches) => Ok(Skip::Union(
                branches
                    .iter()
                    .map(|b| self.skip(b, namespace))
                    .collect::<Result<_, _>>()?,
            )),
            Value::Object(o) => {
                let kind = o
                    .get("type")
                    .ok_or_else(|| format!("a type without \"type\": {ty}"))?;
                let Value::String(kind) = kind else {
                    return self.skip(kind, namespace);
                };
                let own_namespace = o.get("namespace").and_then(Value::as_str);
                let name = o.get("name").and_then(Value::as_str);
                let define = |names: &mut Names, skip: Skip| {
                    if let Some(name) = name {
                        let ns = own_namespace.unwrap_or(namespace);
                        names.defined.insert(full_name(name, ns), skip.clone());
                    }
                    skip
                };
                match kind.as_str() {
                    "array" => {
                        let items = o.get("items").ok_or("an array without items")?;
                        Ok(Skip::Array(Box::new(self.skip(items, namespace)?)))
                    }
                    "map" => {
                        let values = o.get("values").ok_or("a map without values")?;
                        Ok(Skip::Map(Box::new(self.skip(values, namespace)?)))
                    }
                    "fixed" => {
                        let size = o
                            .get("size")
                            .and_then(Value::as_u64)
                            .ok_or("a fixed without size")?;
                        Ok(define(self, Skip::Fixed(size as usize)))
                    }
                    "enum" => Ok(define(self, Skip::Varint)),
                    "record" | "error" => {
                        let ns = name
                            .filter(|n| n.contains('.'))
                            .map(|n| &n[..n.rfind('.').unwrap()])
                            .or(own_namespace)
                            .unwrap_or(namespace)
                            .to_string();
                        let fields = o
                            .get("fields")
                            .and_then(Value::as_array)
                            .ok_or("a record without fields")?;
                        let mut skips = Vec::with_capacity(fields.len());
                        for field in fields {
                            let ty = field.get("type").ok_or("a field without a type")?;
                            skips.push(self.skip(ty, &ns)?);
                        }
                        Ok(define(self, Skip::Record(skips)))
                    }
                    primitive => self.named(primitive, namespace),
                }
            }
            other => Err(format!("not an Avro type: {other}")),
        }
    }

    fn named(&self, name: &str, namespace: &str) -> Result<Skip, String> {
        Ok(match name {
            "null" => Skip::Null,
            "boolean" => Skip::Boolean,
            "int" | "long" => Skip::Varint,
            "float" => Skip::Float,
            "double" => Skip::Double,
            "bytes" | "string" => Skip::Bytes,
            _ => self
                .defined
                .get(&full_name(name, namespace))
                .or_else(|| self.defined.get(name))
                .cloned()
                // a recursive record is not defined until its fields are: refused
                .ok_or_else(|| format!("unknown or recursive type {name}"))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = include_str!("../../../schemas/raw_envelope.avsc");

    fn with_field(extra: &str, at_end: bool) -> String {
        let v1: Value = serde_json::from_str(V1).unwrap();
        let mut fields = v1["fields"].as_array().unwrap().clone();
        let extra: Value = serde_json::from_str(extra).unwrap();
        if at_end {
            fields.push(extra);
        } else {
            fields.insert(3, extra);
        }
        let mut v2 = v1.clone();
        v2["fields"] = Value::Array(fields);
        v2.to_string()
    }

    #[test]
    fn the_committed_schema_is_the_identity() {
        let plan = compile(V1).unwrap();
        assert!(plan.identity);
        assert_eq!(plan.steps.len(), 8);
    }

    #[test]
    fn an_added_optional_field_is_skipped() {
        let v2 = with_field(
            r#"{"name": "venue_region", "type": ["null", "string"], "default": null}"#,
            false,
        );
        let plan = compile(&v2).unwrap();
        assert!(!plan.identity);
        assert_eq!(
            plan.steps[3],
            Step::Skip(Skip::Union(vec![Skip::Null, Skip::Bytes]))
        );
        assert_eq!(plan.steps[4], Step::Read(3));
    }

    #[test]
    fn named_and_nested_types_are_skippable() {
        let v2 = with_field(
            r#"{"name": "extra", "type": ["null", {"type": "record", "name": "Hop",
                "fields": [{"name": "at", "type": {"type": "fixed", "name": "Id", "size": 4}},
                           {"name": "kind", "type": {"type": "enum", "name": "K", "symbols": ["a"]}},
                           {"name": "tags", "type": {"type": "map", "values": {"type": "array", "items": "double"}}},
                           {"name": "again", "type": "Id"}]}], "default": null}"#,
            true,
        );
        let plan = compile(&v2).unwrap();
        let hop = Skip::Record(vec![
            Skip::Fixed(4),
            Skip::Varint,
            Skip::Map(Box::new(Skip::Array(Box::new(Skip::Double)))),
            Skip::Fixed(4),
        ]);
        assert_eq!(
            plan.steps[8],
            Step::Skip(Skip::Union(vec![Skip::Null, hop]))
        );
    }

    #[test]
    fn unreadable_writers_say_why() {
        let v1: Value = serde_json::from_str(V1).unwrap();
        let mut lacking = v1.clone();
        lacking["fields"].as_array_mut().unwrap().remove(6);
        assert!(compile(&lacking.to_string())
            .unwrap_err()
            .contains("lacks field connection_seq"));
        let mut retyped = v1.clone();
        retyped["fields"][6]["type"] = Value::String("string".into());
        assert!(compile(&retyped.to_string())
            .unwrap_err()
            .contains("connection_seq"));
        let recursive = with_field(
            r#"{"name": "n", "type": {"type": "record", "name": "Node",
                "fields": [{"name": "next", "type": ["null", "Node"]}]}}"#,
            true,
        );
        assert!(compile(&recursive).unwrap_err().contains("Node"));
        assert!(compile("[1]").is_err());
        assert!(compile("{").is_err());
    }

    #[test]
    fn learned_ids_are_known_and_failures_remembered() {
        assert_eq!(framed_id(b"\x00\x00\x00\x01\x2a..."), Some(298));
        assert_eq!(framed_id(b"\x00\x00\x01"), None);
        assert_eq!(framed_id(b"\x0eBTC-USD"), None);
        let a: &[u8] = b"\x00\x00\x00\x10\x01body";
        let b: &[u8] = b"\x00\x00\x00\x10\x02body";
        assert_eq!(
            unknown_ids([a, b, a, b"\x0eBTC-USD".as_slice()]),
            vec![4097, 4098]
        );
        learn(4097, Some(V1)).unwrap();
        assert!(learn(4098, None)
            .unwrap_err()
            .contains("no schema with id 4098"));
        assert!(unknown_ids([a, b]).is_empty());
        assert!(plans()[&4098].is_err());
    }
}
