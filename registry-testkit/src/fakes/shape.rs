//! Comparing an answer with a sample response from Consul's API docs: field names, JSON types
//! and presence, not values (ids, indexes and times differ by design). Used by the
//! compatibility tests of the agent and the server.

use serde_json::Value;

/// Every field of `sample` is in `actual` with the same JSON type, recursively (the first
/// element of an array stands for all; a `null` in the sample allows anything). Extra fields
/// are allowed: Consul's own replies carry more than its samples show.
pub fn assert_shape(actual: &Value, sample: &Value, path: &str) {
    match (sample, actual) {
        (Value::Null, _) => {}
        (Value::Object(s), Value::Object(a)) => {
            for (k, sv) in s {
                let av = a
                    .get(k)
                    .unwrap_or_else(|| panic!("{path}.{k} missing in {actual}"));
                assert_shape(av, sv, &format!("{path}.{k}"));
            }
        }
        (Value::Array(s), Value::Array(a)) => {
            if let (Some(sv), Some(av)) = (s.first(), a.first()) {
                assert_shape(av, sv, &format!("{path}[0]"));
            }
        }
        (Value::String(_), Value::String(_))
        | (Value::Number(_), Value::Number(_))
        | (Value::Bool(_), Value::Bool(_)) => {}
        _ => panic!("{path}: {actual} is not the type of the docs' {sample}"),
    }
}
