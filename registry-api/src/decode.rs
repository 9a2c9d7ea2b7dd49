//! Case-insensitive decoding of request bodies.
//!
//! Consul decodes JSON with Go's `encoding/json`, which matches struct fields
//! case-insensitively, and real clients depend on it: some send `Name`, some
//! `name`, some `NAME`. serde matches names exactly, so we decode through a
//! `serde_json::Value` wrapped in [`CaseInsensitive`], which maps each object
//! key onto the struct field of the same name ignoring ASCII case. Keys of maps
//! (`Meta`, `NodeMeta`) are user data and are left exactly as sent.

use serde::de::value::{MapDeserializer, SeqDeserializer};
use serde::de::{self, DeserializeOwned, IntoDeserializer, Visitor};
use serde::forward_to_deserialize_any;
use serde_json::Value;

/// Decodes `body` as JSON into `T`, matching struct fields case-insensitively.
/// The error text is meant for a 400 reply.
pub fn from_slice<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("Request decode failed: {e}"))?;
    from_value(value)
}

/// Like [`from_slice`], from an already parsed value.
pub fn from_value<T: DeserializeOwned>(value: Value) -> Result<T, String> {
    T::deserialize(CaseInsensitive(value)).map_err(|e| format!("Request decode failed: {e}"))
}

/// A JSON value whose objects match struct fields case-insensitively.
pub struct CaseInsensitive(pub Value);

impl<'de> IntoDeserializer<'de, serde_json::Error> for CaseInsensitive {
    type Deserializer = Self;
    fn into_deserializer(self) -> Self {
        self
    }
}

impl<'de> de::Deserializer<'de> for CaseInsensitive {
    type Error = serde_json::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Array(items) => {
                let mut seq = SeqDeserializer::new(items.into_iter().map(CaseInsensitive));
                let out = visitor.visit_seq(&mut seq)?;
                seq.end()?;
                Ok(out)
            }
            Value::Object(map) => {
                let mut access =
                    MapDeserializer::new(map.into_iter().map(|(k, v)| (k, CaseInsensitive(v))));
                let out = visitor.visit_map(&mut access)?;
                access.end()?;
                Ok(out)
            }
            other => other.deserialize_any(visitor),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Object(map) => {
                // Go's decoder reads `null` as the field's zero value, and clients send it
                // (the Go client's txn check operations carry `"ServiceTags": null`): a
                // field given as `null` is read as absent, so it takes its default.
                let present = map.into_iter().filter(|(_, value)| !value.is_null());
                let renamed = present.map(|(key, value)| {
                    let key = if fields.contains(&key.as_str()) {
                        key
                    } else {
                        fields
                            .iter()
                            .find(|f| f.eq_ignore_ascii_case(&key))
                            .map(|f| (*f).to_string())
                            .unwrap_or(key)
                    };
                    (key, CaseInsensitive(value))
                });
                let mut access = MapDeserializer::new(renamed);
                let out = visitor.visit_map(&mut access)?;
                access.end()?;
                Ok(out)
            }
            other => other.deserialize_struct(name, fields, visitor),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.deserialize_enum(name, variants, visitor)
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::RegisterRequest;

    #[test]
    fn fields_match_in_any_case_but_map_keys_are_kept() {
        for body in [
            r#"{"node":"n1","address":"10.0.0.1","service":{"service":"web","port":80,"meta":{"Version":"1"}}}"#,
            r#"{"Node":"n1","Address":"10.0.0.1","Service":{"Service":"web","Port":80,"Meta":{"Version":"1"}}}"#,
            r#"{"NODE":"n1","ADDRESS":"10.0.0.1","SERVICE":{"SERVICE":"web","PORT":80,"META":{"Version":"1"}}}"#,
        ] {
            let req: RegisterRequest = from_slice(body.as_bytes()).unwrap();
            assert_eq!(req.node, "n1");
            assert_eq!(req.address, "10.0.0.1");
            let svc = req.service.unwrap();
            assert_eq!(svc.service, "web");
            assert_eq!(svc.port, 80);
            assert_eq!(svc.meta.get("Version").map(String::as_str), Some("1"));
        }
    }

    #[test]
    fn wrong_types_and_bad_json_are_errors_not_panics() {
        assert!(from_slice::<RegisterRequest>(br#"{"Node":5}"#).is_err());
        assert!(from_slice::<RegisterRequest>(br#"{"Service":{"Port":70000}}"#).is_err());
        assert!(from_slice::<RegisterRequest>(br#"{"Node":"#).is_err());
        assert!(from_slice::<RegisterRequest>(b"[1,2]").is_err());
        let err = from_slice::<RegisterRequest>(br#"{"Checks":"x"}"#).unwrap_err();
        assert!(err.starts_with("Request decode failed"), "{err}");
    }

    #[test]
    fn null_means_absent() {
        let req: RegisterRequest =
            from_slice(br#"{"Node":"n","Service":null,"Checks":[{"name":"c"}]}"#).unwrap();
        assert!(req.service.is_none());
        assert_eq!(req.checks[0].name, "c");
        // Lists and maps given as null are empty, as Go reads them.
        let req: RegisterRequest = from_slice(
            br#"{"Node":"n","NodeMeta":null,"Service":{"Service":"web","Tags":null,"Meta":null},"Checks":null}"#,
        )
        .unwrap();
        let svc = req.service.unwrap();
        assert!(svc.tags.is_empty() && svc.meta.is_empty() && req.checks.is_empty());
        assert!(req.node_meta.is_empty());
    }
}
