//! Strict JSON for token headers and claim sets: one object, no duplicate member names at any
//! depth (RFC 7515 §5.2 lets a parser reject them, and a parser that silently keeps the last
//! would read a different token than a library that keeps the first), nothing after it.
//! Members come back in their order, so layouts can be compared.

use std::cell::RefCell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Why a part is not acceptable JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonProblem {
    /// Not UTF-8, not JSON, not an object, or trailing data.
    Malformed(String),
    /// A member name appears twice in one object.
    DuplicateKey(String),
}

/// Parses `bytes` as one JSON object; returns its members in order.
pub fn parse_object(bytes: &[u8]) -> Result<Vec<(String, Value)>, JsonProblem> {
    let duplicate = RefCell::new(None);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed = TopObject { duplicate: &duplicate }.deserialize(&mut de).and_then(|v| de.end().map(|()| v));
    if let Some(name) = duplicate.into_inner() {
        return Err(JsonProblem::DuplicateKey(name));
    }
    parsed.map_err(|e| JsonProblem::Malformed(e.to_string()))
}

/// The top level: an object, kept as an ordered list.
struct TopObject<'a> {
    duplicate: &'a RefCell<Option<String>>,
}

impl<'de> DeserializeSeed<'de> for TopObject<'_> {
    type Value = Vec<(String, Value)>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for TopObject<'_> {
    type Value = Vec<(String, Value)>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out: Vec<(String, Value)> = Vec::new();
        while let Some(name) = map.next_key::<String>()? {
            if out.iter().any(|(n, _)| *n == name) {
                return Err(self.report(name));
            }
            let value = map.next_value_seed(Strict { duplicate: self.duplicate })?;
            out.push((name, value));
        }
        Ok(out)
    }
}

impl TopObject<'_> {
    fn report<E: de::Error>(&self, name: String) -> E {
        let msg = format!("duplicate member {name:?}");
        *self.duplicate.borrow_mut() = Some(name);
        E::custom(msg)
    }
}

/// Any JSON value, with the duplicate check applied inside nested objects.
struct Strict<'a> {
    duplicate: &'a RefCell<Option<String>>,
}

impl<'de> DeserializeSeed<'de> for Strict<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(Strict { duplicate: self.duplicate })? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Value, A::Error> {
        let members = TopObject { duplicate: self.duplicate }.visit_map(map)?;
        Ok(Value::Object(members.into_iter().collect::<Map<String, Value>>()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_order_and_refuses_duplicates_at_any_depth() {
        let members = parse_object(br#"{"b":1,"a":{"x":[1,{"y":2}]},"c":"s"}"#).unwrap();
        let names: Vec<_> = members.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["b", "a", "c"]);
        assert_eq!(parse_object(br#"{"alg":"RS256","alg":"none"}"#), Err(JsonProblem::DuplicateKey("alg".into())));
        assert_eq!(
            parse_object(br#"{"cnf":{"x5t#S256":"a","x5t#S256":"b"}}"#),
            Err(JsonProblem::DuplicateKey("x5t#S256".into()))
        );
        // The same name escaped differently is the same name.
        assert_eq!(parse_object(br#"{"alg":1,"\u0061lg":2}"#), Err(JsonProblem::DuplicateKey("alg".into())));
        for bad in [&b"[1]"[..], b"\"s\"", b"{} {}", b"{", b"{\"a\":1,}", b"\xff", b""] {
            assert!(matches!(parse_object(bad), Err(JsonProblem::Malformed(_))), "{bad:?}");
        }
    }
}
