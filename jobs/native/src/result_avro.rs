//! Result records as framed Avro (`kafka.result_format: avro`): each record the core publishes
//! as JSON, written instead with its topic's registered schema (`schemas/results/*.avsc`),
//! framed with the schema's registry id (byte 0, the id as 4 bytes big-endian, the body:
//! Confluent's framing, what any Confluent-compatible consumer reads by id).
//!
//! The JSON is what `publish.rs` writes and `test_schema_evolution` checks field for field
//! against these schemas, so one writer of each record stays the only one: this encodes it by
//! the schema, and a record that does not fit (a bug) is refused with the reason.

use serde_json::{Map, Value};

use crate::envelope::push_long;
use crate::writer_schema::push_frame_header;

/// The Avro types the result schemas use.
#[derive(Debug, Clone, PartialEq)]
enum Type {
    Null,
    Boolean,
    Int,
    Long,
    Double,
    String,
    Array(Box<Type>),
    /// a union: its branches in order (a JSON value takes the first branch it fits)
    Union(Vec<Type>),
}

/// Encodes one topic's records with its writer schema.
#[derive(Debug, Clone)]
pub struct ResultEncoder {
    id: u32,
    fields: Vec<(String, Type, bool)>, // name, type, has a null default
}

fn parse_type(ty: &Value) -> Result<Type, String> {
    Ok(match ty {
        Value::String(name) => match name.as_str() {
            "null" => Type::Null,
            "boolean" => Type::Boolean,
            "int" => Type::Int,
            "long" => Type::Long,
            "double" => Type::Double,
            "string" => Type::String,
            other => return Err(format!("type {other} is not one a result schema uses")),
        },
        Value::Array(branches) => {
            Type::Union(branches.iter().map(parse_type).collect::<Result<_, _>>()?)
        }
        Value::Object(o) => match o.get("type").and_then(Value::as_str) {
            Some("array") => Type::Array(Box::new(parse_type(
                o.get("items").ok_or("an array without items")?,
            )?)),
            Some(_) => parse_type(&o["type"])?,
            None => return Err(format!("not an Avro type: {ty}")),
        },
        other => return Err(format!("not an Avro type: {other}")),
    })
}

fn fits(ty: &Type, value: &Value) -> bool {
    match (ty, value) {
        (Type::Null, Value::Null) => true,
        (Type::Boolean, Value::Bool(_)) => true,
        (Type::Int | Type::Long, Value::Number(n)) => n.as_i64().is_some(),
        (Type::Double, Value::Number(_)) => true,
        (Type::String, Value::String(_)) => true,
        (Type::Array(_), Value::Array(_)) => true,
        (Type::Union(branches), v) => branches.iter().any(|b| fits(b, v)),
        _ => false,
    }
}

fn encode(ty: &Type, value: &Value, out: &mut Vec<u8>) -> Result<(), String> {
    match (ty, value) {
        (Type::Null, Value::Null) => {}
        (Type::Boolean, Value::Bool(b)) => out.push(u8::from(*b)),
        (Type::Int, Value::Number(n)) => {
            let v = n.as_i64().ok_or_else(|| format!("{n} is not an int"))?;
            let v = i32::try_from(v).map_err(|_| format!("{n} is out of an int's range"))?;
            push_long(out, i64::from(v));
        }
        (Type::Long, Value::Number(n)) => {
            push_long(out, n.as_i64().ok_or_else(|| format!("{n} is not a long"))?)
        }
        (Type::Double, Value::Number(n)) => out.extend_from_slice(
            &n.as_f64()
                .ok_or_else(|| format!("{n} is not a double"))?
                .to_le_bytes(),
        ),
        (Type::String, Value::String(s)) => {
            push_long(out, s.len() as i64);
            out.extend_from_slice(s.as_bytes());
        }
        (Type::Array(items), Value::Array(values)) => {
            if !values.is_empty() {
                push_long(out, values.len() as i64);
                for v in values {
                    encode(items, v, out)?;
                }
            }
            out.push(0);
        }
        (Type::Union(branches), v) => {
            let index = branches
                .iter()
                .position(|b| fits(b, v))
                .ok_or_else(|| format!("{v} fits no branch of {branches:?}"))?;
            push_long(out, index as i64);
            encode(&branches[index], v, out)?;
        }
        (ty, v) => return Err(format!("{v} is not a {ty:?}")),
    }
    Ok(())
}

impl ResultEncoder {
    /// The encoder of a result schema (its JSON text) registered under `id`.
    pub fn new(id: u32, schema: &str) -> Result<Self, String> {
        let schema: Value = serde_json::from_str(schema).map_err(|e| format!("not JSON: {e}"))?;
        let fields = schema
            .get("fields")
            .and_then(Value::as_array)
            .ok_or("not a record schema")?;
        let fields = fields
            .iter()
            .map(|f| {
                let name = f
                    .get("name")
                    .and_then(Value::as_str)
                    .ok_or("a field without a name")?;
                let ty = parse_type(f.get("type").ok_or("a field without a type")?)?;
                let null_default = f.get("default") == Some(&Value::Null);
                Ok((name.to_string(), ty, null_default))
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(ResultEncoder { id, fields })
    }

    /// Append the framed Avro of one JSON record to `out`; on error `out` is as it was.
    pub fn encode_json(&self, json: &str, out: &mut Vec<u8>) -> Result<(), String> {
        let record: Map<String, Value> =
            serde_json::from_str(json).map_err(|e| format!("not a JSON object: {e}"))?;
        let start = out.len();
        push_frame_header(out, self.id);
        for (name, ty, null_default) in &self.fields {
            let result = match record.get(name) {
                Some(value) => encode(ty, value, out),
                None if *null_default => encode(ty, &Value::Null, out),
                None => Err("missing".to_string()),
            };
            if let Err(why) = result {
                out.truncate(start);
                return Err(format!("field {name}: {why}"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: &str = r#"{"type": "record", "name": "R", "fields": [
        {"name": "s", "type": "string"},
        {"name": "n", "type": "long"},
        {"name": "i", "type": "int"},
        {"name": "p", "type": ["null", "string"], "default": null},
        {"name": "d", "type": ["null", "double"], "default": null},
        {"name": "a", "type": {"type": "array", "items": "long"}},
        {"name": "e", "type": {"type": "array", "items": "string"}}
    ]}"#;

    #[test]
    fn encodes_by_the_schema_in_its_field_order() {
        let enc = ResultEncoder::new(258, SCHEMA).unwrap();
        let mut out = b"prefix".to_vec();
        enc.encode_json(
            r#"{"e": [], "a": [1, -1], "d": 0.5, "i": 1, "n": -2, "s": "ab"}"#,
            &mut out,
        )
        .unwrap();
        let mut want = b"prefix\x00\x00\x00\x01\x02".to_vec();
        want.extend_from_slice(b"\x04ab\x03\x02\x00\x02");
        want.extend_from_slice(&0.5f64.to_le_bytes());
        want.extend_from_slice(b"\x04\x02\x01\x00\x00");
        assert_eq!(out, want);
    }

    #[test]
    fn a_record_that_does_not_fit_is_refused_and_leaves_out_as_it_was() {
        let enc = ResultEncoder::new(1, SCHEMA).unwrap();
        let mut out = b"x".to_vec();
        let err = enc
            .encode_json(
                r#"{"s": "a", "n": "2", "i": 1, "a": [], "e": []}"#,
                &mut out,
            )
            .unwrap_err();
        assert!(err.contains("field n"), "{err}");
        assert_eq!(out, b"x");
        let err = enc
            .encode_json(r#"{"s": "a", "i": 1, "a": [], "e": []}"#, &mut out)
            .unwrap_err();
        assert!(err.contains("field n: missing"), "{err}");
        let err = enc
            .encode_json(
                r#"{"s": "a", "n": 1, "i": 4294967296, "a": [], "e": []}"#,
                &mut out,
            )
            .unwrap_err();
        assert!(err.contains("range"), "{err}");
        assert!(ResultEncoder::new(
            1,
            r#"{"type": "record", "name": "R", "fields": [{"name": "f", "type": "float"}]}"#
        )
        .is_err());
    }
}
