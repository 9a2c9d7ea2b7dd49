//! Reading a policy's text into [`Rules`]: HCL (`hcl-rs`) or JSON, both first brought into
//! one JSON shape and read by one walker ([`Reader`]), so that the two forms cannot drift
//! apart; the bounds ([`MAX_RULES_BYTES`], [`MAX_RULES`]) are checked while reading. What the
//! rules mean is `rules.rs`; what they decide, `authorizer.rs`.

use super::rules::*;
use serde_json::{Map, Value};

/// Consul's rules in HCL or in JSON (JSON if the text, trimmed, starts with '{').
pub(super) fn parse(text: &str) -> Result<Rules, RulesError> {
    if text.len() > MAX_RULES_BYTES {
        return Err(RulesError::TooLong(text.len()));
    }
    let trimmed = text.trim();
    let mut reader = Reader::default();
    if trimmed.is_empty() {
        return Ok(reader.rules);
    }
    if trimmed.starts_with('{') {
        let doc: Value = serde_json::from_str(trimmed).map_err(|e| RulesError::Syntax {
            line: e.line(),
            col: e.column(),
            reason: e.to_string(),
        })?;
        let Value::Object(map) = doc else {
            return Err(RulesError::Syntax {
                line: 1,
                col: 1,
                reason: "the rules must be a JSON object".into(),
            });
        };
        for (key, value) in &map {
            reader.top(key, value)?;
        }
    } else {
        let body = hcl::parse(text).map_err(|e| match &e {
            hcl::Error::Parse(p) => RulesError::Syntax {
                line: p.location().line(),
                col: p.location().column(),
                reason: p.message().to_string(),
            },
            other => RulesError::Syntax {
                line: 1,
                col: 1,
                reason: other.to_string(),
            },
        })?;
        for structure in body.into_inner() {
            let (key, value) = hcl_structure(structure)?;
            reader.top(&key, &value)?;
        }
    }
    Ok(reader.rules)
}

/// One top-level HCL structure in the JSON shape the walker reads: `operator = "read"` is
/// `("operator", "read")`, `service "web" { policy = "write" }` is
/// `("service", {"web": {"policy": "write"}})`.
fn hcl_structure(structure: hcl::Structure) -> Result<(String, Value), RulesError> {
    match structure {
        hcl::Structure::Attribute(attr) => {
            let key = attr.key.to_string();
            let value = hcl_value(&key, attr.expr)?;
            Ok((key, value))
        }
        hcl::Structure::Block(block) => {
            let key = block.identifier.to_string();
            if let Some(scalar) = scalar_keyword(&key) {
                return Err(RulesError::Malformed {
                    at: key,
                    reason: format!("takes a value (`{scalar} = \"read\"`), not a block"),
                });
            }
            if named_keyword(&key).is_none() {
                return Err(RulesError::UnknownKind(key));
            }
            let name = match block.labels.as_slice() {
                [hcl::BlockLabel::String(name)] => name.clone(),
                [hcl::BlockLabel::Identifier(name)] => {
                    return Err(RulesError::Malformed {
                        at: format!("{key} {name}"),
                        reason: "the name must be a quoted string".into(),
                    })
                }
                [] => {
                    return Err(RulesError::Malformed {
                        at: key.clone(),
                        reason: format!("a name is missing (`{key} \"name\" {{ ... }}`)"),
                    })
                }
                _ => {
                    return Err(RulesError::Malformed {
                        at: key,
                        reason: "takes one name, not several".into(),
                    })
                }
            };
            let mut fields = Map::new();
            for inner in block.body.into_inner() {
                match inner {
                    hcl::Structure::Attribute(attr) => {
                        let field = attr.key.to_string();
                        let at = format!("{key} {name:?}");
                        let value = hcl_value(&at, attr.expr)?;
                        fields.insert(field, value);
                    }
                    hcl::Structure::Block(inner) => {
                        return Err(RulesError::Malformed {
                            at: format!("{key} {name:?}"),
                            reason: format!("unexpected block {:?}", inner.identifier.as_str()),
                        })
                    }
                }
            }
            let mut named = Map::new();
            named.insert(name, Value::Object(fields));
            Ok((key, Value::Object(named)))
        }
    }
}

/// An HCL literal as JSON. Rules are data: variables, functions, templates and operators
/// have no meaning in them.
fn hcl_value(at: &str, expr: hcl::Expression) -> Result<Value, RulesError> {
    Ok(match expr {
        hcl::Expression::Null => Value::Null,
        hcl::Expression::Bool(b) => Value::Bool(b),
        // Numbers are wrong wherever they appear; the walker says so with the context.
        hcl::Expression::Number(n) => n.as_f64().map(Value::from).unwrap_or(Value::Null),
        hcl::Expression::String(s) => Value::String(s),
        hcl::Expression::Array(items) => Value::Array(
            items
                .into_iter()
                .map(|e| hcl_value(at, e))
                .collect::<Result<_, _>>()?,
        ),
        hcl::Expression::Object(object) => {
            let mut map = Map::new();
            for (key, value) in object {
                let key = match key {
                    hcl::ObjectKey::Identifier(id) => id.to_string(),
                    hcl::ObjectKey::Expression(hcl::Expression::String(s)) => s,
                    _ => {
                        return Err(RulesError::Malformed {
                            at: at.to_string(),
                            reason: "object keys must be names or quoted strings".into(),
                        })
                    }
                };
                map.insert(key, hcl_value(at, value)?);
            }
            Value::Object(map)
        }
        hcl::Expression::Parenthesis(inner) => hcl_value(at, *inner)?,
        _ => return Err(RulesError::Malformed {
            at: at.to_string(),
            reason:
                "values must be literal strings (no variables, functions or \"${...}\" templates)"
                    .into(),
        }),
    })
}

/// The scalar a top-level keyword names.
fn scalar_keyword(key: &str) -> Option<Scalar> {
    Scalar::ALL.into_iter().find(|s| s.as_str() == key)
}

/// The named family (and match) a top-level keyword names.
fn named_keyword(key: &str) -> Option<(Resource, Match)> {
    Resource::ALL.into_iter().find_map(|r| {
        [Match::Exact, Match::Prefix]
            .into_iter()
            .find(|m| r.keyword(*m) == key)
            .map(|m| (r, m))
    })
}

/// A JSON value's kind, for error messages.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Reads the JSON shape of a policy into [`Rules`], counting rules as it goes.
#[derive(Default)]
struct Reader {
    /// What has been read so far.
    rules: Rules,
    /// Rules read, repeated ones included (the bound is on work, not on distinct rules).
    count: usize,
}

impl Reader {
    /// Counts one more rule against [`MAX_RULES`].
    fn count(&mut self) -> Result<(), RulesError> {
        self.count += 1;
        if self.count > MAX_RULES {
            Err(RulesError::TooMany)
        } else {
            Ok(())
        }
    }

    /// One top-level entry: a scalar or a family's rules.
    fn top(&mut self, key: &str, value: &Value) -> Result<(), RulesError> {
        if let Some(scalar) = scalar_keyword(key) {
            self.count()?;
            let Value::String(word) = value else {
                return Err(RulesError::Malformed {
                    at: key.to_string(),
                    reason: format!(
                        "must be a string (read, write or deny), not {}",
                        kind(value)
                    ),
                });
            };
            let access = access_word("policy", word, key.to_string(), false)?;
            self.rules.add_scalar(scalar, access);
            return Ok(());
        }
        let Some((resource, how)) = named_keyword(key) else {
            return Err(RulesError::UnknownKind(key.to_string()));
        };
        match value {
            // {"service": {"web": {...}, "db": {...}}}
            Value::Object(map) => {
                for (name, body) in map {
                    self.bodies(resource, how, name, body)?;
                }
            }
            // [{"web": {...}}, {"db": {...}}], as HCL-to-JSON converters write repeated blocks.
            Value::Array(items) => {
                for item in items {
                    let Value::Object(map) = item else {
                        return Err(RulesError::Malformed {
                            at: key.to_string(),
                            reason: format!(
                                "list items must be objects of names to rules, not {}",
                                kind(item)
                            ),
                        });
                    };
                    for (name, body) in map {
                        self.bodies(resource, how, name, body)?;
                    }
                }
            }
            other => {
                return Err(RulesError::Malformed {
                    at: key.to_string(),
                    reason: format!(
                    "must map names to rules (`{key} \"name\" {{ policy = \"read\" }}`), not {}",
                    kind(other)
                ),
                })
            }
        }
        Ok(())
    }

    /// A name's rule body, or a list of bodies (`{"web": [{"policy": "read"}]}`).
    fn bodies(
        &mut self,
        resource: Resource,
        how: Match,
        name: &str,
        body: &Value,
    ) -> Result<(), RulesError> {
        match body {
            Value::Array(items) => {
                for item in items {
                    self.rule(resource, how, name, item)?;
                }
                Ok(())
            }
            other => self.rule(resource, how, name, other),
        }
    }

    /// One rule: `{"policy": "read", "intentions": "read"}`.
    fn rule(
        &mut self,
        resource: Resource,
        how: Match,
        name: &str,
        body: &Value,
    ) -> Result<(), RulesError> {
        self.count()?;
        let at = format!("{} {name:?}", resource.keyword(how));
        let Value::Object(fields) = body else {
            return Err(RulesError::Malformed {
                at,
                reason: format!("must be a block with a policy, not {}", kind(body)),
            });
        };
        let mut policy = None;
        for (field, value) in fields {
            // Consul reads its policies with Go's HCL, whose field names are not case
            // sensitive; JSON written by other tools sometimes says "Policy".
            let field_name = if field.eq_ignore_ascii_case("policy") {
                "policy"
            } else if field.eq_ignore_ascii_case("intentions") && resource.takes_intentions() {
                "intentions"
            } else {
                return Err(RulesError::Malformed {
                    at,
                    reason: format!(
                        "unknown field {field:?} (want policy{})",
                        if resource.takes_intentions() {
                            " or intentions"
                        } else {
                            ""
                        }
                    ),
                });
            };
            let Value::String(word) = value else {
                return Err(RulesError::Malformed {
                    at,
                    reason: format!("{field_name} must be a string, not {}", kind(value)),
                });
            };
            if field_name == "policy" {
                policy = Some(access_word(
                    "policy",
                    word,
                    at.clone(),
                    resource.takes_list(),
                )?);
            } else {
                // Intentions are not enforced here (no service mesh); the word is still
                // checked so that a policy this registry accepts is one Consul accepts.
                access_word("intentions", word, at.clone(), false)?;
            }
        }
        let Some(access) = policy else {
            return Err(RulesError::Malformed {
                at,
                reason: "the policy is missing (`policy = \"read\"`)".into(),
            });
        };
        self.rules.add(resource, how, name, access);
        Ok(())
    }
}

/// An access word where `list` is valid only if `list_ok` (Consul's `isPolicyValid`; words
/// are lowercase only, as there).
fn access_word(
    field: &'static str,
    word: &str,
    at: String,
    list_ok: bool,
) -> Result<Access, RulesError> {
    match word {
        "read" => Ok(Access::Read),
        "write" => Ok(Access::Write),
        "deny" => Ok(Access::Deny),
        "list" if list_ok => Ok(Access::List),
        _ => Err(RulesError::InvalidPolicy {
            field,
            word: word.to_string(),
            at,
            want: match (list_ok, word) {
                (true, _) => "read, write, list or deny",
                (false, "list") => "read, write or deny; list is only for key and key_prefix",
                (false, _) => "read, write or deny",
            },
        }),
    }
}
