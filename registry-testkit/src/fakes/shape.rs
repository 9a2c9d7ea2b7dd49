//! Comparing an answer with a sample response from Consul's API docs: field names, JSON types
//! and presence, not values (ids, indexes and times differ by design); and the samples that
//! both the agent's and the server's compatibility tests check. Used by those tests.

use serde_json::{json, Value};

/// The sample entry of `GET /v1/agent/services` in Consul's docs (agent/service.mdx, "List
/// Services"; Enterprise's `Namespace` left out; its `Meta` checked as an object only, its
/// keys being user data).
pub fn agent_service_sample() -> Value {
    json!({
        "ID": "redis",
        "Service": "redis",
        "Tags": [],
        "TaggedAddresses": {
            "lan": {"Address": "127.0.0.1", "Port": 8000},
            "wan": {"Address": "198.51.100.53", "Port": 80}
        },
        "Meta": {},
        "Port": 8000,
        "Address": "",
        "EnableTagOverride": false,
        "Datacenter": "dc1",
        "Weights": {"Passing": 10, "Warning": 1}
    })
}

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
