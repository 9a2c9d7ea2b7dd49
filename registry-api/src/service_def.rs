//! Service definitions in Consul's configuration format
//! (<https://developer.hashicorp.com/consul/docs/services/configuration/services-configuration-reference>):
//! a `service` object or a `services` array, each with `name`, `id`, `tags`, `address`, `port`,
//! `meta`, `check`/`checks`, ... The one parser behind agent configuration files
//! ([`crate::config_file`]) and `registry services register <file>`.
//!
//! Consul reads these keys in snake_case (`enable_tag_override`,
//! `deregister_critical_service_after`) as well as in the API's PascalCase, in any letter case;
//! so we drop the underscores of struct keys and decode case-insensitively
//! ([`crate::decode`]). Keys of user maps (`meta`, a check's `header`, `tagged_addresses`) and
//! the opaque `proxy`/`connect` objects are kept as written.
//!
//! Owns: the file shape of a service definition and its conversion to the agent's
//! [`ServiceRegistration`]. Must not touch: validation beyond the shape (the agent validates a
//! registration whole, as for `PUT /v1/agent/service/register`).

use crate::agent::ServiceRegistration;
use serde_json::{Map, Value};

/// Keys whose object values are user data or opaque: their own keys are kept as written.
const VERBATIM: &[&str] = &[
    "meta",
    "header",
    "taggedaddresses",
    "proxy",
    "connect",
    "nodemeta",
];

/// A key with its underscores removed and in lower case: how struct keys are compared.
fn folded(key: &str) -> String {
    key.chars()
        .filter(|c| *c != '_')
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// `value` with the underscores of every struct key dropped (`enable_tag_override` ->
/// `enabletagoverride`, which [`crate::decode`] matches to `EnableTagOverride`), user maps and
/// opaque objects left as written.
pub fn normalize_keys(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let out: Map<String, Value> = map
                .into_iter()
                .map(|(k, v)| {
                    let key = folded(&k);
                    let v = if VERBATIM.contains(&key.as_str()) {
                        v
                    } else {
                        normalize_keys(v)
                    };
                    (key, v)
                })
                .collect();
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.into_iter().map(normalize_keys).collect()),
        other => other,
    }
}

/// One service definition as read: its place in the document (`service` or `services[i]`)
/// and the registration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceDefinition {
    /// Where it sits in its document, for error messages: `service` or `services[2]`.
    pub place: String,
    /// The registration, as `PUT /v1/agent/service/register` takes it.
    pub registration: ServiceRegistration,
}

impl ServiceDefinition {
    /// The instance id: `id`, or the name when there is none (as the agent defaults it).
    pub fn id(&self) -> &str {
        if self.registration.id.is_empty() {
            &self.registration.name
        } else {
            &self.registration.id
        }
    }
}

/// The service definitions of a configuration document (a JSON object, keys as written):
/// its `service` object and its `services` array (either may be absent, both may be given).
/// Other keys are not looked at. The error names the definition and the reason.
pub fn definitions(doc: &Value) -> Result<Vec<ServiceDefinition>, String> {
    let Value::Object(map) = doc else {
        return Err("the configuration must be a JSON object".into());
    };
    let mut out = Vec::new();
    for (key, value) in map {
        match folded(key).as_str() {
            // Consul's HCL turns repeated `service` blocks into an array: take both.
            "service" => match value {
                Value::Array(items) => {
                    for (i, v) in items.iter().enumerate() {
                        out.push(definition(format!("service[{i}]"), v)?);
                    }
                }
                v => out.push(definition("service".into(), v)?),
            },
            "services" => {
                let Value::Array(items) = value else {
                    return Err("services: must be an array of service definitions".into());
                };
                for (i, v) in items.iter().enumerate() {
                    out.push(definition(format!("services[{i}]"), v)?);
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

/// One definition at `place`.
fn definition(place: String, value: &Value) -> Result<ServiceDefinition, String> {
    if !value.is_object() {
        return Err(format!("{place}: must be an object"));
    }
    let registration: ServiceRegistration =
        crate::decode::from_value(normalize_keys(value.clone())).map_err(|e| {
            format!(
                "{place}: {}",
                e.trim_start_matches("Request decode failed: ")
            )
        })?;
    if registration.name.is_empty() {
        return Err(format!("{place}: missing service name (\"name\")"));
    }
    Ok(ServiceDefinition {
        place,
        registration,
    })
}

/// Parses `text` (a JSON configuration document) into its service definitions. A syntax error
/// says `line:col: reason`; a definition that does not fit says which one and why.
pub fn parse(text: &str) -> Result<Vec<ServiceDefinition>, String> {
    let doc: Value = serde_json::from_str(text)
        .map_err(|e| format!("{}:{}: {}", e.line(), e.column(), syntax_reason(&e)))?;
    definitions(&doc)
}

/// serde_json's message without its trailing ` at line L column C` (we put the position first).
pub fn syntax_reason(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consul_file_format_in_snake_case_and_pascal_case() {
        let defs = parse(
            r#"{
              "service": {
                "name": "web", "id": "web-1", "tags": ["v1"], "port": 8080, "address": "10.0.0.5",
                "meta": {"Version_Tag": "1"}, "enable_tag_override": true,
                "check": {"http": "http://localhost:8080/health", "interval": "10s",
                          "deregister_critical_service_after": "1m", "tls_skip_verify": true,
                          "header": {"X_Custom": ["a"]}}
              },
              "services": [
                {"Name": "db", "Port": 5432, "Checks": [{"TCP": "localhost:5432", "Interval": "5s"},
                                                          {"ttl": "30s", "check_id": "db-ttl"}]}
              ]
            }"#,
        )
        .unwrap();
        assert_eq!(defs.len(), 2);
        let web = &defs[0].registration;
        assert_eq!(
            (defs[0].id(), web.port, web.address.as_str()),
            ("web-1", 8080, "10.0.0.5")
        );
        assert!(web.enable_tag_override);
        assert_eq!(web.meta.get("Version_Tag").map(String::as_str), Some("1"));
        let check = web.check.as_ref().unwrap();
        assert_eq!(check.deregister_critical_service_after, "1m");
        assert!(check.tls_skip_verify);
        assert!(check.header.contains_key("X_Custom"));
        assert_eq!(defs[1].id(), "db");
        assert_eq!(defs[1].place, "services[0]");
        let db = &defs[1].registration;
        assert_eq!(db.checks[0].tcp, "localhost:5432");
        assert_eq!(db.checks[1].check_id, "db-ttl");
    }

    #[test]
    fn broken_documents_say_where_and_why() {
        let err = parse("{\n  \"service\": {\"name\": \"web\",,}\n}").unwrap_err();
        assert!(err.starts_with("2:"), "{err}");
        let err = parse(r#"{"service": {"name": "web", "port": "eighty"}}"#).unwrap_err();
        assert!(err.starts_with("service: "), "{err}");
        let err = parse(r#"{"services": [{"port": 1}]}"#).unwrap_err();
        assert_eq!(err, "services[0]: missing service name (\"name\")");
        assert!(parse(r#"{"services": {"name": "x"}}"#).is_err());
        assert!(parse("[1]").is_err());
        assert!(parse("{}").unwrap().is_empty());
    }
}
