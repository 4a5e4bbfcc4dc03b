//! The strict JSON reader of token headers and claim sets, `sitesign::token::json::parse_object`.
//!
//! Checked against serde_json's own reader (the same grammar, but duplicates silently merged) as
//! the oracle: the strict reader accepts exactly the inputs that are one JSON object with no
//! member name twice in any object at any depth, and then returns the members in their order
//! with the values serde_json reads. Duplicates are counted without a second parser: in valid
//! JSON every `:` outside a string separates one member's name from its value, so an input has a
//! duplicate exactly when it has more such colons than the merged value has members.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use sitesign::token::json::{JsonProblem, parse_object};

/// Colons outside strings: the number of object members written in a valid JSON text.
fn members_written(text: &[u8]) -> usize {
    let (mut in_string, mut escaped, mut colons) = (false, false, 0);
    for &b in text {
        match (in_string, escaped, b) {
            (true, true, _) => escaped = false,
            (true, false, b'\\') => escaped = true,
            (true, false, b'"') => in_string = false,
            (false, _, b'"') => in_string = true,
            (false, _, b':') => colons += 1,
            _ => {}
        }
    }
    colons
}

/// Members of every object in `value`, nested ones included.
fn members_read(value: &Value) -> usize {
    match value {
        Value::Object(m) => m.len() + m.values().map(members_read).sum::<usize>(),
        Value::Array(a) => a.iter().map(members_read).sum(),
        _ => 0,
    }
}

fuzz_target!(|data: &[u8]| {
    let oracle = serde_json::from_slice::<Value>(data).ok();
    let clean_object = match &oracle {
        Some(v @ Value::Object(_)) => members_read(v) == members_written(data),
        _ => false,
    };
    match parse_object(data) {
        Ok(members) => {
            assert!(clean_object, "accepted input that is not one object without duplicates");
            let Some(Value::Object(expected)) = &oracle else { panic!("accepted input serde_json refuses") };
            let names: Vec<&String> = members.iter().map(|(n, _)| n).collect();
            let expected_names: Vec<&String> = expected.keys().collect();
            assert_eq!(names, expected_names, "members out of order");
            for (name, value) in &members {
                assert_eq!(Some(value), expected.get(name), "member {name:?} read differently");
            }
        }
        Err(JsonProblem::DuplicateKey(name)) => {
            assert!(!clean_object, "refused a clean object for a duplicate {name:?}");
        }
        Err(JsonProblem::Malformed(_)) => {
            assert!(!clean_object, "refused a clean object as malformed");
        }
    }
});
