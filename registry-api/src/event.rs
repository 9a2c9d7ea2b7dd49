//! User events (`PUT /v1/event/fire/:name`, `GET /v1/event/list`,
//! <https://developer.hashicorp.com/consul/api-docs/event>): the event's shape, the rules a
//! fire is checked by, which agents an event is for, and the index Consul's clients derive
//! from an event's ID. One copy for the server that keeps a datacenter's events and the agent
//! that lists the ones meant for it. Must not keep or deliver events (the server's
//! `state/events.rs` keeps them).

use serde::{Deserialize, Serialize};

/// Events kept per datacenter: Consul's agents keep a ring of the last 256 they saw
/// (`agent.userEventBuf`); older ones are gone.
pub const MAX_EVENTS: usize = 256;

/// Largest payload accepted, in bytes: Consul's events travel in Serf user messages, whose
/// size limit is 512 bytes by default and 9 KiB at most; we take the maximum.
pub const MAX_EVENT_PAYLOAD: usize = 9 * 1024;

/// Longest event name or filter accepted, in bytes.
pub const MAX_EVENT_FIELD: usize = 256;

/// Regex program size limit for the filters (the regex crate's default is 10 MiB per regex).
const FILTER_REGEX_LIMIT: usize = 64 << 10;

/// A user event, in Consul's JSON shape.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct UserEvent {
    /// A random UUID; its bits give the list's blocking index ([`event_index`]).
    #[serde(rename = "ID")]
    pub id: String,
    /// The event's name.
    pub name: String,
    /// Opaque payload, base64 in JSON; `null` when there is none.
    #[serde(with = "payload_base64")]
    pub payload: Option<Vec<u8>>,
    /// Regex over node names: only matching agents see the event.
    pub node_filter: String,
    /// Regex over service names: only agents with a matching service see it.
    pub service_filter: String,
    /// Regex over the tags of the services that matched `service_filter`.
    pub tag_filter: String,
    /// Event format version (Consul's `userEventMaxVersion` is 1).
    pub version: u32,
    /// Consul's Lamport time of the event; here the Raft index that recorded it, which
    /// orders a datacenter's events the same way on every server.
    #[serde(rename = "LTime")]
    pub ltime: u64,
}

/// `Payload` as base64 or `null`, as Consul's `[]byte` field is.
mod payload_base64 {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(bytes) => {
                s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
            }
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        let text: Option<String> = Option::deserialize(d)?;
        text.map(|t| {
            base64::engine::general_purpose::STANDARD
                .decode(t)
                .map_err(serde::de::Error::custom)
        })
        .transpose()
    }
}

/// The index `GET /v1/event/list` answers with: the last event's UUID folded to 64 bits
/// (Consul's `uuidToUint64`: the high and low halves XORed), 1 when there is none. Not
/// monotonic: Consul's Go client (`Event().IDToIndex`, the `event` watch) recomputes it from
/// the IDs it receives to find the new ones, so it must be exactly this.
pub fn event_index(last_id: Option<&str>) -> u64 {
    let Some(id) = last_id else { return 1 };
    let hex: String = id.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 {
        return 1;
    }
    let low = u64::from_str_radix(&hex[0..16], 16).unwrap_or(0);
    let high = u64::from_str_radix(&hex[16..32], 16).unwrap_or(0);
    low ^ high
}

/// An event's filters, compiled: which agents it is for.
#[derive(Debug)]
pub struct EventTargets {
    /// Over the agent's node name.
    node: Option<regex::Regex>,
    /// Over the agent's services' names (and IDs, as Consul matches the local map's keys).
    service: Option<regex::Regex>,
    /// Over the tags of the services `service` matched.
    tag: Option<regex::Regex>,
}

impl EventTargets {
    /// Compiles `event`'s filters; a bad one is an error naming it.
    pub fn of(event: &UserEvent) -> Result<Self, String> {
        let compile = |what: &str, re: &str| {
            if re.is_empty() {
                return Ok(None);
            }
            regex::RegexBuilder::new(re)
                .size_limit(FILTER_REGEX_LIMIT)
                .dfa_size_limit(FILTER_REGEX_LIMIT)
                .build()
                .map(Some)
                .map_err(|e| format!("Invalid {what} filter: {e}"))
        };
        Ok(EventTargets {
            node: compile("node", &event.node_filter)?,
            service: compile("service", &event.service_filter)?,
            tag: compile("tag", &event.tag_filter)?,
        })
    }

    /// Whether the agent of `node`, running `services` (id, name, tags), is one the event is
    /// for (Consul's `shouldProcessUserEvent`).
    pub fn include<'a>(
        &self,
        node: &str,
        mut services: impl Iterator<Item = (&'a str, &'a str, &'a [String])>,
    ) -> bool {
        if self.node.as_ref().is_some_and(|re| !re.is_match(node)) {
            return false;
        }
        let Some(svc_re) = &self.service else {
            return true;
        };
        services.any(|(id, name, tags)| {
            (svc_re.is_match(name) || svc_re.is_match(id))
                && self
                    .tag
                    .as_ref()
                    .is_none_or(|re| tags.iter().any(|t| re.is_match(t)))
        })
    }
}

/// Checks a fire before it is proposed (Consul's `validateUserEventParams`, with a 400
/// rather than Consul's 500: it is the caller's input that is wrong): [`check_fire_shape`]
/// and filters that compile.
pub fn validate_fire(event: &UserEvent) -> Result<(), String> {
    check_fire_shape(event)?;
    EventTargets::of(event).map(|_| ())
}

/// The rules of a fire that do not depend on the regex engine: names, lengths, the payload's
/// size. The state machine checks only these when it records an event, because whether a
/// regex compiles under a size limit can change with the regex crate's version, and replicas
/// on different versions must agree on every entry.
pub fn check_fire_shape(event: &UserEvent) -> Result<(), String> {
    if event.name.is_empty() {
        return Err("Missing name".into());
    }
    if event.name.starts_with('_') {
        return Err("Event names starting with an underscore are reserved".into());
    }
    for (what, v) in [
        ("name", &event.name),
        ("node filter", &event.node_filter),
        ("service filter", &event.service_filter),
        ("tag filter", &event.tag_filter),
    ] {
        if v.len() > MAX_EVENT_FIELD {
            return Err(format!(
                "Event {what} is longer than {MAX_EVENT_FIELD} bytes"
            ));
        }
    }
    if !event.tag_filter.is_empty() && event.service_filter.is_empty() {
        return Err("Cannot provide tag filter without service filter".into());
    }
    if event
        .payload
        .as_ref()
        .is_some_and(|p| p.len() > MAX_EVENT_PAYLOAD)
    {
        return Err(format!(
            "Event payload is larger than {MAX_EVENT_PAYLOAD} bytes"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_is_consuls_fold_of_the_uuid() {
        // Consul's uuidToUint64("b54fe110-7af5-cafc-d1fb-afc8ba432b1c"):
        // 0xb54fe1107af5cafc ^ 0xd1fbafc8ba432b1c.
        let id = "b54fe110-7af5-cafc-d1fb-afc8ba432b1c";
        assert_eq!(
            event_index(Some(id)),
            0xb54f_e110_7af5_cafc_u64 ^ 0xd1fb_afc8_ba43_2b1c
        );
        assert_eq!(event_index(None), 1);
    }

    #[test]
    fn shape_and_payload_are_consuls() {
        let e = UserEvent {
            id: "b54fe110-7af5-cafc-d1fb-afc8ba432b1c".into(),
            name: "deploy".into(),
            version: 1,
            ltime: 7,
            ..Default::default()
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["Payload"], serde_json::Value::Null);
        assert_eq!(v["LTime"], 7);
        assert_eq!(v["ID"], "b54fe110-7af5-cafc-d1fb-afc8ba432b1c");
        let with = UserEvent {
            payload: Some(b"hi".to_vec()),
            ..e
        };
        let v = serde_json::to_value(&with).unwrap();
        assert_eq!(v["Payload"], "aGk=");
        assert_eq!(serde_json::from_value::<UserEvent>(v).unwrap(), with);
    }

    #[test]
    fn filters_choose_agents_as_consul_does() {
        let ev = |n: &str, s: &str, t: &str| UserEvent {
            name: "x".into(),
            node_filter: n.into(),
            service_filter: s.into(),
            tag_filter: t.into(),
            ..Default::default()
        };
        let tags = vec!["v1".to_string(), "blue".to_string()];
        let services = || [("web-1", "web", tags.as_slice())].into_iter();
        let yes = |e: UserEvent| EventTargets::of(&e).unwrap().include("node-a", services());
        assert!(yes(ev("", "", "")));
        assert!(yes(ev("^node-", "", "")));
        assert!(!yes(ev("^other", "", "")));
        assert!(yes(ev("", "^web$", "")));
        assert!(yes(ev("", "web-1", "")), "service IDs match too");
        assert!(!yes(ev("", "^db$", "")));
        assert!(yes(ev("", "web", "^blue$")));
        assert!(!yes(ev("", "web", "^green$")));
    }

    #[test]
    fn bad_fires_are_refused_with_a_reason() {
        let ok = UserEvent {
            name: "deploy".into(),
            ..Default::default()
        };
        assert_eq!(validate_fire(&ok), Ok(()));
        let cases = [
            (UserEvent::default(), "Missing name"),
            (
                UserEvent {
                    name: "_x".into(),
                    ..Default::default()
                },
                "reserved",
            ),
            (
                UserEvent {
                    tag_filter: "v1".into(),
                    ..ok.clone()
                },
                "without service filter",
            ),
            (
                UserEvent {
                    node_filter: "(".into(),
                    ..ok.clone()
                },
                "Invalid node filter",
            ),
            (
                UserEvent {
                    payload: Some(vec![0; MAX_EVENT_PAYLOAD + 1]),
                    ..ok.clone()
                },
                "larger than",
            ),
            (
                UserEvent {
                    name: "n".repeat(MAX_EVENT_FIELD + 1),
                    ..ok.clone()
                },
                "longer than",
            ),
        ];
        for (e, why) in cases {
            let err = validate_fire(&e).unwrap_err();
            assert!(err.contains(why), "{err}");
        }
    }
}
